"""What one simulator app shares between requests, and the JSON response helpers."""

from __future__ import annotations

import asyncio
import random
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from aiohttp import web

from .engine import Scheduler, SimStats
from .prefix import PrefixCache
from .settings import SimSettings


class Switch(Protocol):
    """A replica's listening socket, which /sim/down and /sim/up close and reopen."""

    @property
    def is_up(self) -> bool:
        """True while the replica accepts connections."""
        ...

    @property
    def root_url(self) -> str:
        """Base address without the /v1 suffix."""
        ...

    async def down(self, seconds: float | None = None) -> None:
        """Stop accepting connections and cut the open ones; back up after `seconds` if given."""
        ...

    async def up(self) -> None:
        """Listen again on the same port."""
        ...


def error_response(message: str, status: int, kind: str) -> web.Response:
    """Return vLLM's ErrorResponse body."""
    body = {"object": "error", "message": message, "type": kind, "param": None, "code": status}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def json_response(data: Any, status: int = 200) -> web.Response:
    """Return an orjson-encoded JSON response."""
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


@dataclass
class Received:
    """One request as it reached the simulator, for GET /sim/requests."""

    path: str
    request_id: str
    body: Any  # the parsed JSON, every field kept
    raw: str  # the body text exactly as received

    def detail(self) -> dict[str, Any]:
        """The record as GET /sim/requests?detail=1 lists it."""
        return {"path": self.path, "request_id": self.request_id, "body": self.body,
                "raw": self.raw}  # fmt: skip


@dataclass
class SimState:
    """Everything one simulator app shares between requests."""

    settings: SimSettings
    stats: SimStats = field(default_factory=SimStats)
    history: deque[Received] = field(init=False)
    fault_mode: str = "none"  # queued by POST /sim/faults
    fault_count: int = 0
    fault_after: int = 0
    seen: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    created: int = field(default_factory=lambda: int(time.time()))
    switch: Switch | None = None  # set by start_simulator
    siblings: list[Switch] = field(default_factory=list)  # replicas started together, by index
    # Counters shared by the replicas started together (a SimCluster's `total`): requests in
    # flight across them all, and the most seen at once.
    group: SimStats | None = None
    background: set[asyncio.Task[Any]] = field(default_factory=set)  # pending down/up flips

    def __post_init__(self) -> None:
        """Build the pieces that depend on settings."""
        self.scheduler = Scheduler(self.settings, self.stats)
        self.history = deque(maxlen=self.settings.history_size)
        self.rng = random.Random(self.settings.seed)
        self.prefix = PrefixCache(self.settings.prefix_cache_size)


STATE = web.AppKey("vllm_sim_state", SimState)
# The request id of a /v1 request: its X-Request-Id header, or a fresh one.
REQUEST_ID = web.RequestKey("vllm_sim_request_id", str)
# Whether a generation request hit the prefix cache (unset when it was not looked up).
PREFIX_HIT = web.RequestKey("vllm_sim_prefix_hit", bool)
