"""One of several server processes on one port: who it is, and its share of the global caps."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import signal
from dataclasses import dataclass

from .config import Config, ConfigError


@dataclass(frozen=True)
class ProcessInfo:
    """This process's place among `count` (index from 0) and where the master gathers the
    processes' metrics."""

    index: int
    count: int
    metrics_dir: str


def split(total: int, index: int, count: int) -> int:
    """Process `index`'s part of `total` among `count`: equal, the remainder one each to the
    first processes, so the parts add up to `total` exactly."""
    return total // count + (1 if index < total % count else 0)


def share(config: Config, index: int, count: int) -> Config:
    """The config of process `index` of `count` when nothing global holds the caps (no
    coordination): an equal share of `queue.workers`, of each replica's `max_concurrency` and
    of `limits.upstream_rps`. ConfigError if a cap is too small to give each process one."""
    if count == 1:
        return config
    workers = config.queue.workers
    if workers < count:
        raise ConfigError(f"queue.workers is {workers}, fewer than server.processes ({count}): "
                          "each process needs at least one worker")
    models = []
    for model in config.models:
        replicas = []
        for spec in model.replicas:
            cap = spec.max_concurrency
            if 0 < cap < count:
                raise ConfigError(
                    f"models: replica {spec.url!r} has max_concurrency {cap}, fewer than "
                    f"server.processes ({count}): each process needs at least one place")
            replicas.append(dataclasses.replace(spec, max_concurrency=split(cap, index, count))
                            if cap else spec)
        models.append(dataclasses.replace(model, replicas=tuple(replicas)))
    config = dataclasses.replace(config, models=tuple(models))
    config = config.replace("queue", workers=split(workers, index, count))
    # A rate has no rounding: each process sends at most rps / count a second.
    return config.replace("limits", upstream_rps=config.limits.upstream_rps / count)


def follow_master(master_pid: int) -> None:
    """Ask Linux for SIGTERM when the master dies (a SIGKILLed master leaves no orphans that
    keep the port); if it died already, stop now."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux: the check below only
        pass
    if os.getppid() != master_pid:
        raise SystemExit("chatgate: the master process is gone")
