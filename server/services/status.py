"""Readiness: whether the worker pool takes work and each model has a replica that answers."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from workers.pool import WorkerPool
from workers.router import ModelRoute, Router

from .metrics import Metrics


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason the service is not ready: a fixed word and, for admins, the details."""

    # "shutting_down" | "workers_down" | "model_server" | "model_degraded" | "redis_down"
    kind: str
    detail: str  # never a URL or a credential: error classes and counts only


@dataclass(frozen=True, slots=True)
class Readiness:
    """What /ready knows: problems (ready when none is fatal), the models, the queue."""

    problems: list[Problem]
    model: str  # the default model
    model_server: str  # its first replica's URL, credentials replaced by ***
    queue: dict[str, Any] = field(default_factory=dict)
    models: list[dict[str, Any]] = field(default_factory=list)
    # With Redis: whether it answers and so whether the limits are global or per-process.
    coordination: dict[str, Any] | None = None

    @property
    def ready(self) -> bool:
        """Ready unless a problem stops chat work (a replica out of several does not, nor
        Redis down: the limits are then per-process)."""
        return not any(p.kind not in _DEGRADED for p in self.problems)


_DEGRADED = frozenset({"model_degraded", "redis_down"})  # the node still serves


class StatusService:
    """Answers readiness checks from the pool's state and the replica prober's findings."""

    def __init__(self, pool: WorkerPool, router: Router, workers: int,
                 metrics: Metrics, redis_up: Callable[[], bool] | None = None) -> None:
        self._redis_up = redis_up  # None: no Redis configured
        self._pool = pool
        self._router = router
        self._workers = workers
        self._metrics = metrics
        self.draining = False  # SIGTERM with server.drain_s: not ready, still serving

    async def ready(self) -> Readiness:
        """Every reason the service cannot take chat work now (none: ready)."""
        pool = self._pool
        problems: list[Problem] = []
        if pool.closed:
            problems.append(Problem("shutting_down", pool.closed))
        elif self.draining:
            problems.append(Problem("shutting_down", "draining before stopping"))
        if pool.live_workers < self._workers:
            problems.append(Problem("workers_down", f"only {pool.live_workers} workers alive"))
        # The prober checks every replica every few seconds: this reads its findings.
        models = [_describe(route) for route in self._router.routes]
        if not any(route.available for route in self._router.routes):
            problems.append(Problem("model_server", "no model has a replica that answers"))
        else:
            for route, shown in zip(self._router.routes, models, strict=True):
                out = sum(1 for r in shown["replicas"] if r["state"] != "healthy")
                if out:
                    problems.append(Problem("model_degraded", f"model {route.name}: {out} of "
                                            f"{len(route.replicas)} replicas out"))
        coordination = None
        if self._redis_up is not None:
            up = self._redis_up()
            coordination = {"redis": "up" if up else "down",
                            "limits": "global" if up else "per-process"}
            if not up:
                problems.append(Problem("redis_down", "Redis does not answer: rate limits "
                                        "are per process until it does"))
        fatal = [p.kind for p in problems if p.kind not in _DEGRADED]
        self._metrics.readiness([problem.kind for problem in problems], not fatal)
        default = self._router.default
        return Readiness(problems, default.name, default.replicas[0].label,
                         {"waiting": pool.queue.qsize(), "max_size": pool.queue.maxsize,
                          "running": pool.stats.running, "workers": pool.live_workers},
                         models, coordination)


def _describe(route: ModelRoute) -> dict[str, Any]:
    """A model and each replica's state, why, load and counters (never a credential)."""
    now = time.monotonic()
    return {
        "name": route.name, "served_name": route.served_name, "available": route.available,
        "failovers": route.failovers, "affinity": dict(route.affinity),
        "replicas": [{
            "url": r.label, "state": r.state,
            "reason": r.reason if r.state != "healthy" else None,
            "in_flight": r.in_flight, "max_concurrency": r.spec.max_concurrency or None,
            "weight": r.spec.weight, "load": round(r.score(now), 3), "requests": r.requests,
            "errors": dict(r.errors),
            "first_token_ms": None if r.ttft_s is None else round(r.ttft_s * 1000, 1),
        } for r in route.replicas]}
