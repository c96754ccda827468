"""Readiness: whether the worker pool takes work and the model server answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workers.pool import WorkerPool
from workers.upstream import UpstreamClient

from .metrics import Metrics


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason the service is not ready: a fixed word and, for admins, the details."""

    kind: str  # "shutting_down" | "workers_down" | "model_server"
    detail: str  # never a URL or a credential: error classes and counts only


@dataclass(frozen=True, slots=True)
class Readiness:
    """What /ready knows: problems (empty when ready), the model, the queue, the server."""

    problems: list[Problem]
    model: str
    model_server: str  # the configured URL with any credentials replaced by ***
    queue: dict[str, Any] = field(default_factory=dict)


class StatusService:
    """Answers readiness checks (a probe of the model server on its own connection)."""

    def __init__(self, pool: WorkerPool, upstream: UpstreamClient, workers: int,
                 metrics: Metrics) -> None:
        self._pool = pool
        self._upstream = upstream
        self._workers = workers
        self._metrics = metrics

    async def ready(self) -> Readiness:
        """Every reason the service cannot take chat work now (none: ready)."""
        pool = self._pool
        problems: list[Problem] = []
        if pool.closed:
            problems.append(Problem("shutting_down", pool.closed))
        if pool.live_workers < self._workers:
            problems.append(Problem("workers_down", f"only {pool.live_workers} workers alive"))
        try:
            await self._upstream.probe()
        except Exception as err:  # noqa: BLE001 - reported, not raised
            # The upstream client's messages name error classes, never the URL.
            problems.append(Problem("model_server", f"model server unreachable: {err}"))
        self._metrics.readiness([problem.kind for problem in problems])
        return Readiness(problems, self._upstream.model, self._upstream.shown_url,
                         {"waiting": pool.queue.qsize(), "max_size": pool.queue.maxsize,
                          "running": pool.stats.running, "workers": pool.live_workers})
