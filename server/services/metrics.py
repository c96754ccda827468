"""What operators see at /metrics: Prometheus series, fed by the middleware and the services.

No label ever holds a secret or a user's value: routes are patterns, reasons are fixed words.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from workers import job as jobs

disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: half the output

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """Every series chatgate exports, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("chatgate_requests", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=r)
        self.duration = Histogram("chatgate_request_duration_seconds",
                                  "HTTP request time, first byte in to last byte out",
                                  ["route"], buckets=_SLOW, registry=r)
        self.overhead = Histogram(
            "chatgate_overhead_seconds",
            "What chatgate adds to a model request: request time minus time with the model",
            ["route"], buckets=_FAST, registry=r)
        self.queue_wait = Histogram("chatgate_queue_wait_seconds",
                                    "Time a job waited for a worker", buckets=_FAST + _SLOW[7:],
                                    registry=r)
        self.ttft = Histogram("chatgate_upstream_first_token_seconds",
                              "Model server: time to the first token (or answer)",
                              buckets=_SLOW, registry=r)
        self.upstream = Histogram("chatgate_upstream_seconds", "Model server: whole request",
                                  buckets=_SLOW, registry=r)
        self.upstream_errors = Counter("chatgate_upstream_errors",
                                       "Model requests that failed, by kind", ["kind"],
                                       registry=r)
        self.rejections = Counter("chatgate_rejections", "Requests refused, by reason",
                                  ["reason"], registry=r)
        self.tokens = Counter("chatgate_tokens", "Tokens in (prompt) and out (completion)",
                              ["direction"], registry=r)
        self.queue_depth = Gauge("chatgate_queue_depth", "Jobs waiting for a worker",
                                 registry=r)
        self.workers_busy = Gauge("chatgate_workers_busy", "Workers running a job", registry=r)
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}

    def request_done(self, method: str, route: str, status: int, spent: float,
                     upstream: float | None) -> None:
        """One finished HTTP request (label children are cached: a dict lookup each)."""
        children = self._children.get((method, route, status))
        if children is None:
            children = self._children[(method, route, status)] = (
                self.requests.labels(method, route, str(status)),
                self.duration.labels(route), self.overhead.labels(route))
        children[0].inc()
        children[1].observe(spent)
        if upstream is not None:
            children[2].observe(max(0.0, spent - upstream))

    def watch_pool(self, depth: Callable[[], int], busy: Callable[[], int]) -> None:
        """Read the queue depth and busy workers at scrape time (never on the hot path)."""
        self.queue_depth.set_function(depth)
        self.workers_busy.set_function(busy)

    def watch_cache(self, counts: Callable[[], tuple[int, int]]) -> None:
        """Token-cache hits and misses, read at scrape time."""
        self.registry.register(_CacheCollector(counts))

    def job_ended(self, job: jobs.Job, outcome: jobs.Finished | jobs.Failed) -> None:
        """Queue wait, time to first token, model time, errors and tokens of one job."""
        t = job.times
        if t.started is not None:
            self.queue_wait.observe(t.started - t.queued)
            if t.first is not None:
                self.ttft.observe(t.first - t.started)
            self.upstream.observe(t.upstream_s)
        if isinstance(outcome, jobs.Finished):
            usage = outcome.completion.usage
            self.tokens.labels("in").inc(_int(usage.get("prompt_tokens")))
            self.tokens.labels("out").inc(_int(usage.get("completion_tokens")))
        else:
            self.upstream_errors.labels(_kind(outcome.error)).inc()

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


class _CacheCollector(Collector):
    def __init__(self, counts: Callable[[], tuple[int, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        hits, misses = self._counts()
        family = CounterMetricFamily("chatgate_token_cache", "Token verifications by result",
                                     labels=["result"])
        family.add_metric(["hit"], hits)
        family.add_metric(["miss"], misses)
        yield family


def _kind(error: Exception) -> str:
    """A fixed word for an error's class (never its message)."""
    name = type(error).__name__
    return {"UpstreamTimeout": "timeout", "UpstreamRejected": "rejected",
            "UpstreamError": "unavailable", "JobCancelled": "cancelled",
            "ShuttingDown": "shutdown"}.get(name, "other")


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
