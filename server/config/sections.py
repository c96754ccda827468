"""The configuration's sections: one typed, frozen dataclass per component, and Config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from workers.probe import ProbeSettings
from workers.replica import HealthSettings, ReplicaSpec
from workers.router import AffinitySettings
from workers.upstream import UpstreamSettings


class ConfigError(Exception):
    """A configuration problem, reported to the operator in one line."""


@dataclass(frozen=True)
class ServerConfig:
    """HTTP listener and request handling."""

    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 1_048_576
    shutdown_grace_s: float = 30.0
    drain_s: float = 0.0
    cors_origins: tuple[str, ...] = ()
    trust_forwarded: bool = False
    trusted_proxy_hops: int = 0
    access_log: bool = True
    header_timeout_s: float = 10.0
    keepalive_timeout_s: float = 75.0
    body_timeout_s: float = 30.0
    max_connections: int = 4096
    processes: int = 1  # server processes on the port (SO_REUSEPORT) under one master

    @property
    def proxy_hops(self) -> int:
        """How many proxies of ours stand in front: `trusted_proxy_hops`, else 1 if trusted."""
        return self.trusted_proxy_hops or (1 if self.trust_forwarded else 0)


@dataclass(frozen=True)
class DatabaseConfig:
    """The database: a SQLite file (the default) or PostgreSQL at `url`, and connections."""

    path: str = "data/chatgate.db"
    # postgresql://user:password@host:port/db; it may hold a password: kept out of repr/logs
    url: str = field(default="", repr=False)
    read_connections: int = 3
    busy_timeout_ms: int = 5000
    synchronous: str = "NORMAL"
    max_batch: int = 512
    pool_size: int = 10
    connect_timeout_s: float = 5.0


@dataclass(frozen=True)
class AuthConfig:
    """Passwords, tokens, the token cache and registration."""

    secret: str = ""
    token_ttl_s: int = 3600
    cache_ttl_s: int = 300
    cache_size: int = 10000
    revocation_poll_s: float = 0.5  # how often each process reads others' revocations; 0 = never
    registration: str = "open"  # open | closed | approval
    register_open: bool = True  # older switch, kept working: false = closed (if left open)
    admins: tuple[str, ...] = ()

    @property
    def registration_mode(self) -> str:
        """How sign-ups work: `registration`, but an older config's `register_open: false`
        still closes them when `registration` was left at open."""
        if self.registration == "open" and not self.register_open:
            return "closed"
        return self.registration


@dataclass(frozen=True)
class LimitsConfig:
    """Rate limits: per client, per user, and towards the model."""

    login_per_ip_per_minute: int = 10
    login_failures_per_account: int = 5
    login_backoff_max_s: int = 300
    chat_per_user_per_minute: int = 30
    upstream_rps: float = 100.0
    monthly_tokens_per_user: int = 0
    conversations_per_user_per_minute: int = 30  # 0 = no limit
    max_conversations_per_user: int = 10_000  # 0 = no cap
    max_stored_chars_per_user: int = 100_000_000  # titles + message text; 0 = no cap
    max_api_keys_per_user: int = 100  # API keys one user may have at once; 0 = no cap
    max_import_bytes: int = 20_971_520  # the largest body POST /api/conversations/import takes


@dataclass(frozen=True)
class LLMConfig(UpstreamSettings):
    """The vLLM (OpenAI-compatible) upstream: the workers' settings, plus request defaults."""

    max_tokens: int = 1024
    temperature: float = 0.7


@dataclass(frozen=True)
class ModelConfig:
    """One model clients may ask for: its name, the servers that run it and its defaults."""

    name: str = ""
    served_name: str = ""  # what its servers call it ("" = the name; or learned if both "")
    replicas: tuple[ReplicaSpec, ...] = ()
    max_tokens: int = 0  # 0 = llm.max_tokens
    temperature: float | None = None  # None = llm.temperature
    system_prompt: str | None = None  # None = memory.system_prompt


@dataclass(frozen=True)
class RoutingConfig(HealthSettings, ProbeSettings, AffinitySettings):
    """How requests are spread over a model's replicas, and when one is taken out."""


@dataclass(frozen=True)
class QueueConfig:
    """The bounded chat job queue and its worker pool."""

    max_size: int = 512
    workers: int = 64
    max_per_user: int = 32
    max_running_per_user: int = 0  # 0 = a quarter of the workers (at least 1)

    @property
    def running_cap(self) -> int:
        """How many workers one user's jobs may hold at once."""
        return self.max_running_per_user or max(1, self.workers // 4)


@dataclass(frozen=True)
class BackgroundConfig:
    """Low-priority jobs (generated titles, summaries of older turns, memory suggestions):
    served only when no chat turn may start, on at most a share of the workers."""

    share: float = 0.25  # of queue.workers background jobs may hold at once (at least one)
    max_waiting: int = 256  # background jobs waiting at most; more are dropped, not queued
    titles: bool = True  # a short title generated after a conversation's first reply
    summaries: bool = True  # older turns summarised when a history outgrows its budget
    summary_max_tokens: int = 400  # the longest summary asked for


@dataclass(frozen=True)
class ChatConfig:
    """Turns that outlive their connection: how long they wait for a reader to come back."""

    detached_grace_s: float = 30.0
    finished_turn_ttl_s: float = 120.0
    max_detached_per_user: int = 4


@dataclass(frozen=True)
class MemoryConfig:
    """What each prompt carries: the system prompt and a history budget."""

    system_prompt: str = "You are a helpful assistant."
    max_history_messages: int = 20
    max_history_tokens: int = 3000


@dataclass(frozen=True)
class MemoriesConfig:
    """Long-term memories: short facts each user keeps, added to the system prompt of every
    turn (not `memory`, which is one conversation's history budget)."""

    max_tokens: int = 300  # about this many tokens of memories per prompt, newest first
    max_per_user: int = 200  # memories (active and proposed) one user may keep
    suggestions: bool = False  # propose memories from what users say (a background job)
    cache_size: int = 10_000  # users whose memories and settings are kept in memory


@dataclass(frozen=True)
class UsageConfig:
    """Token accounting."""

    flush_interval_s: float = 1.0


@dataclass(frozen=True)
class CoordinationConfig:
    """Redis for what several processes and nodes share (empty url: each process alone)."""

    redis_url: str = ""  # redis://host:6379/0, rediss://..., unix:///path
    node_id: str = ""  # this process's name in shared state ("" = host:pid)
    key_prefix: str = "chatgate:"
    timeout_s: float = 0.5  # one command's wait: past it Redis counts as down
    health_interval_s: float = 1.0
    lease_ttl_s: float = 10.0  # an upstream lease's life unrenewed: a dead node's come back
    lease_renew_s: float = 3.0  # how often a node renews the leases it holds
    heartbeat_s: float = 1.0  # a node renews its liveness key this often...
    node_ttl_s: float = 3.0  # ...which expires after this: then its turns are ended by another
    stream_flush_s: float = 0.05  # a running reply's deltas go to Redis at most this often
    stream_max_records: int = 10_000  # a turn's Stream is trimmed to about this many records


@dataclass(frozen=True)
class MetricsConfig:
    """GET /metrics (Prometheus text format)."""

    enabled: bool = True
    allow_from: tuple[str, ...] = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class RenderConfig:
    """Markdown to HTML for render=html: where it runs and how much work one request may ask."""

    processes: int = 1
    max_render_cpu_s: float = 1.0
    max_reply_chars: int = 100_000
    max_chars_per_request: int = 100_000
    max_pending_chars: int = 500_000
    wait_s: float = 2.0
    cache_mb: int = 64
    stream_interval_s: float = 1.0  # a streaming reply's text so far rendered this often; 0 = off


@dataclass(frozen=True)
class Config:
    """The whole configuration, one object passed down from run.py."""

    server: ServerConfig = field(default_factory=ServerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    memories: MemoriesConfig = field(default_factory=MemoriesConfig)
    usage: UsageConfig = field(default_factory=UsageConfig)
    coordination: CoordinationConfig = field(default_factory=CoordinationConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    models: tuple[ModelConfig, ...] = ()
    routing: RoutingConfig = field(default_factory=RoutingConfig)

    @property
    def model_list(self) -> tuple[ModelConfig, ...]:
        """The models served: `models`, or else `llm.base_url` as one model of one replica."""
        if self.models:
            return self.models
        llm = self.llm
        return (ModelConfig(llm.model, llm.model, (ReplicaSpec(llm.base_url, llm.api_key),)),)

    def replace(self, section: str, **changes: Any) -> Config:
        """Return a copy with some keys of one section changed (tests, CLI flags)."""
        return dataclasses.replace(
            self, **{section: dataclasses.replace(getattr(self, section), **changes)}
        )


