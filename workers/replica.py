"""One model server of a model: its limits, its health and its load, as the router sees them."""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Literal

from .upstream import UpstreamClient

State = Literal["healthy", "cooling", "down"]
# Reasons that mean the server is not there or will never take our requests as configured:
# the replica is down at once, until a probe succeeds.
DOWN_AT_ONCE = frozenset({"connect", "auth", "model"})
PROBE_FAILURES_TO_DOWN = 2  # a slow probe now and then is not a dead server


@dataclass(frozen=True)
class ReplicaSpec:
    """One replica as configured: where it is, its key, how much it may carry at once."""

    url: str
    api_key: str = ""
    max_concurrency: int = 0  # 0 = no limit of its own (the worker pool bounds it)
    weight: float = 1.0  # its share of the load relative to its siblings


@dataclass(frozen=True)
class HealthSettings:
    """When a replica is taken out of routing, and for how long (the `routing` section)."""

    failure_window_s: float = 30.0
    failure_ratio: float = 0.5
    failure_min_requests: int = 3
    cooldown_s: float = 5.0
    max_cooldown_s: float = 60.0
    metrics_max_age_s: float = 10.0


@dataclass(frozen=True, slots=True)
class Load:
    """What the server's own /metrics said (vLLM's names), and when."""

    running: float
    waiting: float
    kv_cache: float  # 0..1
    own_in_flight: int  # our requests in flight when it was read (they are in `running`)
    at: float


class Replica:
    """A replica's health (healthy, cooling down, down) and load, fed by requests and probes."""

    def __init__(self, spec: ReplicaSpec, client: UpstreamClient,
                 settings: HealthSettings) -> None:
        self.spec = spec
        self.client = client
        self.label = client.shown_url  # never carries credentials: fit for logs and metrics
        self._s = settings
        self.in_flight = 0
        self.reason = ""  # why it is cooling down or down
        self.load: Load | None = None
        self.requests = 0
        self.errors: Counter[str] = Counter()  # by reason: connect, reset, status, timeout...
        self.ttft_s: float | None = None  # moving average of the time to the first token
        self._window: deque[tuple[float, bool]] = deque()
        self._cool_until = 0.0
        self._cool_level = 0
        self._down = False
        self._probe_failures = 0

    @property
    def state(self) -> State:
        """healthy (routable), cooling (failing requests: out for a while) or down."""
        if self._down:
            return "down"
        if self._cool_until > time.monotonic():
            return "cooling"
        return "healthy"

    @property
    def routable(self) -> bool:
        """Whether new requests may go here."""
        return not self._down and self._cool_until <= time.monotonic()

    @property
    def has_room(self) -> bool:
        """Whether one more request stays within its max_concurrency."""
        cap = self.spec.max_concurrency
        return not cap or self.in_flight < cap

    def score(self, now: float) -> float:
        """Its load per unit of weight: our requests in flight (exact), plus from its recent
        /metrics the requests others run there, twice those waiting in its own queue, and its
        KV-cache use (0..1, a tie-breaker between equally busy replicas)."""
        load = float(self.in_flight)
        seen = self.load
        if seen is not None and now - seen.at <= self._s.metrics_max_age_s:
            load += max(0.0, seen.running - seen.own_in_flight) + 2 * seen.waiting \
                + seen.kv_cache
        return load / self.spec.weight

    def succeeded(self, ttft_s: float | None) -> None:
        """A request it served ended well (or was refused for the client's own fault)."""
        self._record(True)
        self._cool_level = 0
        if ttft_s is not None:
            self.ttft_s = ttft_s if self.ttft_s is None else 0.8 * self.ttft_s + 0.2 * ttft_s

    def failed(self, reason: str, detail: str, may_cool: bool = True) -> None:
        """A request it served failed: a refused connection or a rejected key takes it out at
        once; otherwise it cools down when most of its recent requests failed (if `may_cool`:
        the last replica left in routing is kept, or passing errors would become certain)."""
        self.errors[reason] += 1
        if reason in DOWN_AT_ONCE:
            self._take_down(detail)
            return
        self._record(False)
        window = self._window
        failures = sum(1 for _, ok in window if not ok)
        if may_cool and len(window) >= self._s.failure_min_requests and \
                failures > self._s.failure_ratio * len(window):
            self._cool_down(f"{failures} of its last {len(window)} requests failed: {detail}")

    def probed(self, problem: str | None, reason: str = "") -> bool:
        """A probe's result (None: fine). True if the replica's state changed."""
        before = self.state
        if problem is None:
            self._probe_failures = 0
            self._down = False  # back: a cool-down for failing requests still runs out
            if before == "down":
                self.reason = ""
        else:
            self._probe_failures += 1
            if reason in DOWN_AT_ONCE or self._probe_failures >= PROBE_FAILURES_TO_DOWN:
                self._take_down(problem)
        return self.state != before

    def observe(self, running: float, waiting: float, kv_cache: float) -> None:
        """Its load as its /metrics told it just now."""
        self.load = Load(running, waiting, kv_cache, self.in_flight, time.monotonic())

    def _take_down(self, why: str) -> None:
        self._down = True
        self.reason = why
        self._window.clear()

    def _cool_down(self, why: str) -> None:
        """Out for a while: 1, 2, 4 ... times cooldown_s while it keeps failing."""
        self._cool_level += 1
        spell = min(self._s.cooldown_s * 2 ** (self._cool_level - 1), self._s.max_cooldown_s)
        self._cool_until = time.monotonic() + spell
        self.reason = f"cooling down for {spell:g} s: {why}"
        self._window.clear()  # judged afresh when it comes back

    def _record(self, ok: bool) -> None:
        now = time.monotonic()
        window = self._window
        window.append((now, ok))
        horizon = now - self._s.failure_window_s
        while window and (window[0][0] < horizon or len(window) > 1000):
            window.popleft()
