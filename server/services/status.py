"""Readiness: whether the worker pool takes work and the model server answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workers.pool import WorkerPool
from workers.upstream import UpstreamClient


@dataclass(frozen=True, slots=True)
class Readiness:
    """What /ready reports: problems (empty when ready), the model and the queue."""

    problems: list[str]
    model: str
    queue: dict[str, Any] = field(default_factory=dict)


class StatusService:
    """Answers readiness checks (a probe of the model server on its own connection)."""

    def __init__(self, pool: WorkerPool, upstream: UpstreamClient, workers: int) -> None:
        self._pool = pool
        self._upstream = upstream
        self._workers = workers

    async def ready(self) -> Readiness:
        """Every reason the service cannot take chat work now (none: ready)."""
        pool = self._pool
        problems: list[str] = []
        if pool.closed:
            problems.append(pool.closed)
        if pool.live_workers < self._workers:
            problems.append(f"only {pool.live_workers} workers alive")
        try:
            await self._upstream.probe()
        except Exception as err:  # noqa: BLE001 - reported, not raised
            problems.append(f"model server unreachable: {err}")
        return Readiness(problems, self._upstream.model,
                         {"waiting": pool.queue.qsize(), "max_size": pool.queue.maxsize,
                          "running": pool.stats.running, "workers": pool.live_workers})
