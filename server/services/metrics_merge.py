"""/metrics across the processes of one master: each writes its series to a shared folder once
a second; a scrape merges its own live series with the others' files.

prometheus-client's multiprocess mode would write every counter update to an mmap under a lock
and cannot read the gauges we compute at scrape time (queue depth, replica states) nor our
collectors; so the hot path stays a dict update and the merge happens here, at scrape time.
Counters and histograms add up, those of finished processes included (the master folds each
one's last snapshot into `retired.json`, so totals never go down); gauges combine over the
live processes only: summed, or for a view each process has of the same thing, averaged (a
replica's state: the share of processes that see it so), or the maximum (ready: 1 if the last
check of any process passed; a process never asked says 0).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

# name, help, type, unit, samples [(sample name, labels, value)]
Family = tuple[str, str, str, str, list[tuple[str, dict[str, str], float]]]

GAUGE_MODES = {"chatgate_ready": "max", "chatgate_replica_state": "mean",
               "chatgate_replica_load": "mean"}  # any other gauge: the sum
RETIRED = "retired.json"
WRITE_EVERY_S = 1.0


def snapshot(registry: CollectorRegistry) -> list[Family]:
    """Every series of a registry, as plain data."""
    return [(m.name, m.documentation, m.type, m.unit,
             [(s.name, dict(s.labels), float(s.value)) for s in m.samples])
            for m in registry.collect()]


def merge(live: Iterable[list[Family]], retired: Iterable[list[Family]] = ()) -> list[Metric]:
    """One family per name: counters and histograms summed over every snapshot, gauges over
    the live ones by their mode."""
    heads: dict[str, tuple[str, str, str]] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]] = {}
    for snap, alive in [*((s, True) for s in live), *((s, False) for s in retired)]:
        for name, doc, kind, unit, samples in snap:
            if kind == "gauge" and not alive:
                continue
            heads.setdefault(name, (doc, kind, unit))
            series = values.setdefault(name, {})
            for sample, labels, value in samples:
                key = (sample, tuple(sorted(labels.items())))
                series.setdefault(key, []).append(value)
    merged = []
    for name, (doc, kind, unit) in heads.items():
        metric = Metric(name, doc, kind, unit)
        combine = _combiner(GAUGE_MODES.get(name, "sum") if kind == "gauge" else "sum")
        for (sample, pairs), seen in values[name].items():
            metric.add_sample(sample, dict(pairs), combine(seen))
        merged.append(metric)
    return merged


def _combiner(mode: str) -> Callable[[list[float]], float]:
    if mode == "max":
        return max
    if mode == "mean":
        return lambda seen: sum(seen) / len(seen)
    return sum


class _Merged(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


class ProcessMetrics:
    """This process's part of a shared /metrics: writes its snapshot, renders everyone's."""

    def __init__(self, registry: CollectorRegistry, directory: str, pid: int) -> None:
        self._registry = registry
        self._dir = Path(directory)
        self._pid = pid
        self._path = self._dir / f"live-{pid}.json"

    async def write(self) -> None:
        """Save this process's series (collected here, written by a thread)."""
        data = orjson.dumps(snapshot(self._registry))
        await asyncio.to_thread(_write_atomic, self._path, data)

    async def run(self) -> None:
        """Write every second until cancelled."""
        while True:
            await self.write()
            await asyncio.sleep(WRITE_EVERY_S)

    async def render(self) -> bytes:
        """The text exposition of every process together: this one's series as of now, the
        others' as of their last write (at most a second old)."""
        own = snapshot(self._registry)
        others, retired = await asyncio.to_thread(_read_others, self._dir, self._path.name)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged(merge([own, *others], retired)))
        return generate_latest(registry)


def retire(directory: str, pid: int) -> None:
    """Fold a finished process's last counters and histograms into the retired totals (its
    gauges end with it). Called by the master, one process at a time (it reads, adds and
    writes the totals)."""
    folder = Path(directory)
    path = folder / f"live-{pid}.json"
    last = _load(path)
    if last is None:
        return
    before = _load(folder / RETIRED) or []
    totals = [(m.name, m.documentation, m.type, m.unit,
               [(s.name, dict(s.labels), float(s.value)) for s in m.samples])
              for m in merge([], [before, last])]
    _write_atomic(folder / RETIRED, orjson.dumps(totals))
    path.unlink(missing_ok=True)


def _read_others(folder: Path, own: str) -> tuple[list[list[Family]], list[list[Family]]]:
    live = [snap for path in sorted(folder.glob("live-*.json")) if path.name != own
            if (snap := _load(path)) is not None]
    retired = _load(folder / RETIRED)
    return live, [retired] if retired else []


def _load(path: Path) -> list[Family] | None:
    try:
        raw: Any = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None  # gone (retired meanwhile) or never written
    return [(f[0], f[1], f[2], f[3], [(s[0], s[1], s[2]) for s in f[4]]) for f in raw]


def _write_atomic(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never half of one."""
    tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
