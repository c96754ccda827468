"""The routing's series at /metrics: each replica's state, load, attempts and errors, and each
model's failovers and affinity. Read from the router at scrape time, never on the hot path.

Labels are configured names and shown URLs (credentials and query strings replaced by ***).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from workers.replica import State
from workers.router import Router

STATES: tuple[State, ...] = ("healthy", "cooling", "down")


class RouterCollector(Collector):
    """Exports the router's own counters and gauges."""

    def __init__(self, router: Router) -> None:
        self._router = router

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "replica"]
        state = GaugeMetricFamily("chatgate_replica_state",
                                  "1 for the replica's state: healthy, cooling (out after "
                                  "failing requests) or down (unreachable or refusing us)",
                                  labels=[*labels, "state"])
        in_flight = GaugeMetricFamily("chatgate_replica_in_flight",
                                      "Requests of ours in flight to the replica", labels=labels)
        load = GaugeMetricFamily("chatgate_replica_load", "The replica's routing score: "
                                 "in-flight plus its own queue, per unit of weight",
                                 labels=labels)
        requests = CounterMetricFamily("chatgate_replica_requests",
                                       "Attempts sent to the replica", labels=labels)
        errors = CounterMetricFamily("chatgate_replica_errors",
                                     "Failed attempts on the replica, by reason",
                                     labels=[*labels, "reason"])
        failovers = CounterMetricFamily("chatgate_model_failovers", "Attempts moved to "
                                        "another replica after a failure before the first "
                                        "token", labels=["model"])
        affinity = CounterMetricFamily("chatgate_model_affinity", "Routing decisions for "
                                       "requests with an affinity key: hit (same replica), "
                                       "moved (another) or new", labels=["model", "result"])
        unavailable = CounterMetricFamily("chatgate_model_unavailable", "Requests refused "
                                          "because every replica was out", labels=["model"])
        now = time.monotonic()
        for route in self._router.routes:
            for r in route.replicas:
                names = [route.name, r.label]
                current = r.state
                for s in STATES:
                    state.add_metric([*names, s], 1.0 if s == current else 0.0)
                in_flight.add_metric(names, r.in_flight)
                load.add_metric(names, r.score(now))
                requests.add_metric(names, r.requests)
                for reason, count in sorted(r.errors.items()):
                    errors.add_metric([*names, reason], count)
            failovers.add_metric([route.name], route.failovers)
            unavailable.add_metric([route.name], route.unavailable)
            for result, count in route.affinity.items():
                affinity.add_metric([route.name, result], count)
        yield from (state, in_flight, load, requests, errors, failovers, affinity, unavailable)
