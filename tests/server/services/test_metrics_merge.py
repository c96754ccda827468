"""/metrics of several processes merged: counters add up (finished processes' too), gauges
combine over the live ones by their mode."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from server.services.metrics import Metrics
from server.services.metrics_merge import ProcessMetrics, merge, retire, snapshot


class _States(Collector):
    def __init__(self, state: dict[str, float]) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("chatgate_replica_state", "state", labels=["state"])
        for name, value in self._state.items():
            family.add_metric([name], value)
        yield family


def process(requests: int, depth: int, ready: int, state: dict[str, float]) -> Metrics:
    """One process's metrics: requests served, a queue depth, readiness, a replica's state."""
    metrics = Metrics()
    metrics.requests.inc("GET", "/health", "200", by=requests)
    metrics.queue_wait.observe(0.01 * requests)
    metrics.watch_pool(lambda: depth, lambda: 0)
    metrics.ready.set(ready)
    metrics.registry.register(_States(state))
    return metrics


def values(families: list[Metric]) -> dict[tuple[str, Any], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in families for s in family.samples}


def test_counters_and_histograms_add_up_gauges_by_mode() -> None:
    one = process(3, 2, 0, {"healthy": 1, "down": 0})
    two = process(4, 5, 1, {"healthy": 0, "down": 1})
    got = values(merge([snapshot(one.registry), snapshot(two.registry)]))
    route = (("method", "GET"), ("route", "/health"), ("status", "200"))
    assert got[("chatgate_requests_total", route)] == 7
    assert got[("chatgate_queue_wait_seconds_count", ())] == 2
    assert got[("chatgate_queue_depth", ())] == 7  # summed
    assert got[("chatgate_ready", ())] == 1  # the maximum
    assert got[("chatgate_replica_state", (("state", "healthy"),))] == 0.5  # share of views


async def test_finished_processes_keep_their_counts_not_their_gauges(tmp_path: Path) -> None:
    for pid, requests in ((101, 3), (102, 4)):
        (tmp_path / f"live-{pid}.json").write_bytes(
            orjson.dumps(snapshot(process(requests, 5, 1, {}).registry)))
        retire(str(tmp_path), pid)
        assert not (tmp_path / f"live-{pid}.json").exists()
    retire(str(tmp_path), 101)  # already folded in: nothing more
    text = (await ProcessMetrics(process(10, 1, 1, {}).registry, str(tmp_path),
                                 103).render()).decode()
    assert 'chatgate_requests_total{method="GET",route="/health",status="200"} 17.0' in text
    assert "chatgate_queue_depth 1.0" in text  # the live process's only
