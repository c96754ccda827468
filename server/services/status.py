"""Readiness: whether the worker pool takes work and each model has a replica that answers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from workers.pool import WorkerPool
from workers.router import ModelRoute, Router

from .metrics import Metrics


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason the service is not ready: a fixed word and, for admins, the details."""

    kind: str  # "shutting_down" | "workers_down" | "model_server" | "model_degraded"
    detail: str  # never a URL or a credential: error classes and counts only


@dataclass(frozen=True, slots=True)
class Readiness:
    """What /ready knows: problems (ready when none is fatal), the models, the queue."""

    problems: list[Problem]
    model: str  # the default model
    model_server: str  # its first replica's URL, credentials replaced by ***
    queue: dict[str, Any] = field(default_factory=dict)
    models: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        """Ready unless a problem stops chat work (a replica out of several does not)."""
        return not any(p.kind != "model_degraded" for p in self.problems)


class StatusService:
    """Answers readiness checks from the pool's state and the replica prober's findings."""

    def __init__(self, pool: WorkerPool, router: Router, workers: int,
                 metrics: Metrics) -> None:
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
        fatal = [p.kind for p in problems if p.kind != "model_degraded"]
        self._metrics.readiness([problem.kind for problem in problems], not fatal)
        default = self._router.default
        return Readiness(problems, default.name, default.replicas[0].label,
                         {"waiting": pool.queue.qsize(), "max_size": pool.queue.maxsize,
                          "running": pool.stats.running, "workers": pool.live_workers},
                         models)


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
