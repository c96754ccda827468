"""What operators see at /metrics: Prometheus series, fed by the middleware and the services.

No label ever holds a secret or a user's value: routes are patterns, reasons are fixed words.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from workers import job as jobs
from workers.router import Router

from ..storage import StorageStats
from .metrics_merge import ProcessMetrics
from .routing_metrics import RouterCollector

disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: half the output

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Buckets:
    """One histogram series: plain counts, written by the event loop only, so no lock."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count one value in the first bucket whose upper bound holds it."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value


class Family(Collector):
    """Counters or histograms by label values, exported at scrape time.

    prometheus-client's own series take a lock and check their state on every update; a
    turn updates eight of them, so on the hot path a dict and a list do the same for less.
    """

    def __init__(self, name: str, doc: str, labels: Sequence[str] = (),
                 buckets: Sequence[float] | None = None) -> None:
        self.name, self.doc, self.labels, self.buckets = name, doc, list(labels), buckets
        self.counts: dict[tuple[str, ...], float] = {}
        self.series: dict[tuple[str, ...], Buckets] = {}

    def inc(self, *values: str, by: float = 1) -> None:
        """Add to the counter of these label values."""
        self.counts[values] = self.counts.get(values, 0) + by

    def of(self, *values: str) -> Buckets:
        """The histogram series of these label values (made on first use)."""
        series = self.series.get(values)
        if series is None:
            assert self.buckets is not None
            series = self.series[values] = Buckets(self.buckets)
        return series

    def collect(self) -> Iterator[Metric]:
        if self.buckets is None:
            counter = CounterMetricFamily(self.name, self.doc, labels=self.labels)
            for values, count in sorted(self.counts.items()):
                counter.add_metric(list(values), count)
            yield counter
            return
        histogram = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for values, series in sorted(self.series.items()):
            running, cumulative = 0, []
            for bound, count in zip([*map(_le, series.bounds), "+Inf"], series.counts, strict=True):
                running += count
                cumulative.append((bound, float(running)))
            histogram.add_metric(list(values), cumulative, series.total)
        yield histogram


class Metrics:
    """Every series chatgate exports, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)

        def family(*args: Any, **kwargs: Any) -> Family:
            made = Family(*args, **kwargs)
            r.register(made)
            return made

        self.requests = family("chatgate_requests", "HTTP requests by route and status",
                               ["method", "route", "status"])
        self.duration = family("chatgate_request_duration_seconds",
                               "HTTP request time, first byte in to last byte out", ["route"],
                               buckets=_SLOW)
        self.overhead = family(
            "chatgate_overhead_seconds",
            "What chatgate adds to a model request: request time minus time with the model",
            ["route"], buckets=_FAST)
        self.queue_wait = family("chatgate_queue_wait_seconds", "Time a job waited for a worker",
                                 buckets=_FAST + _SLOW[7:]).of()
        self.ttft = family("chatgate_upstream_first_token_seconds",
                           "Model server: time to the first token (or answer)",
                           buckets=_SLOW).of()
        self.upstream = family("chatgate_upstream_seconds", "Model server: whole request",
                               buckets=_SLOW).of()
        self.upstream_errors = family("chatgate_upstream_errors",
                                      "Model requests that failed, by kind", ["kind"])
        self.rejections = family("chatgate_rejections", "Requests refused, by reason",
                                 ["reason"])
        self.tokens = family("chatgate_tokens", "Tokens in (prompt) and out (completion)",
                             ["direction"])
        self.queue_depth = Gauge("chatgate_queue_depth", "Jobs waiting for a worker",
                                 registry=r)
        self.workers_busy = Gauge("chatgate_workers_busy", "Workers running a job", registry=r)
        self.ready = Gauge("chatgate_ready", "1 if the last readiness check passed, else 0",
                           registry=r)
        self.not_ready = family("chatgate_ready_failures",
                                "Readiness checks that found a problem, by kind", ["kind"])
        self.background = family("chatgate_background_jobs",
                                 "Background jobs (titles, ...) by kind and how they ended: "
                                 "done, failed, cancelled, or dropped (no room: never queued)",
                                 ["kind", "outcome"])
        self.background_waiting = Gauge("chatgate_background_waiting",
                                        "Background jobs waiting for a worker", registry=r)
        self.background_running = Gauge("chatgate_background_running",
                                        "Workers running a background job", registry=r)
        self.lease_waiting = Gauge("chatgate_lease_waiting",
                                   "Workers holding a job while they wait for an upstream "
                                   "place shared with other nodes (Redis leases)", registry=r)
        self.replica_ttft = family("chatgate_replica_first_token_seconds",
                                   "Time to the first token, per replica", ["model", "replica"],
                                   buckets=_SLOW)
        self._children: dict[tuple[str, str, int], tuple[tuple[str, ...], Buckets, Buckets]] = {}
        self.shared: ProcessMetrics | None = None  # set when this is one of several processes

    def request_done(self, method: str, route: str, status: int, spent: float,
                     upstream: float | None) -> None:
        """One finished HTTP request (its series are cached: a dict lookup each)."""
        children = self._children.get((method, route, status))
        if children is None:
            children = self._children[(method, route, status)] = (
                (method, route, str(status)), self.duration.of(route), self.overhead.of(route))
        self.requests.inc(*children[0])
        children[1].observe(spent)
        if upstream is not None:
            children[2].observe(max(0.0, spent - upstream))

    def requests_seen(self) -> Counter[str]:
        """Requests so far by 'METHOD /route/pattern', whatever their status (for tests and
        benchmarks; read, never kept on the hot path)."""
        seen: Counter[str] = Counter()
        for (method, route, _), count in self.requests.counts.items():
            seen[f"{method} {route}"] += int(count)
        return seen

    def watch_pool(self, depth: Callable[[], int], busy: Callable[[], int]) -> None:
        """Read the queue depth and busy workers at scrape time (never on the hot path)."""
        self.queue_depth.set_function(depth)
        self.workers_busy.set_function(busy)

    def watch_background(self, waiting: Callable[[], int], running: Callable[[], int]) -> None:
        """Background jobs waiting and running, read at scrape time."""
        self.background_waiting.set_function(waiting)
        self.background_running.set_function(running)

    def watch_leases(self, waiting: Callable[[], int]) -> None:
        """Workers waiting for a shared lease, read at scrape time."""
        self.lease_waiting.set_function(waiting)

    def background_ended(self, kind: str, outcome: str, usage: dict[str, Any]) -> None:
        """One background job's end (`kind` and `outcome` are fixed words) and its tokens."""
        self.background.inc(kind, outcome)
        self.tokens.inc("in", by=_int(usage.get("prompt_tokens")))
        self.tokens.inc("out", by=_int(usage.get("completion_tokens")))

    def watch_cache(self, counts: Callable[[], tuple[int, int]]) -> None:
        """Token-cache hits and misses, read at scrape time."""
        self.registry.register(_CacheCollector(counts))

    def watch_render(self, counts: Callable[[], dict[str, int]]) -> None:
        """Replies rendered, served from the render cache, declined or given up, at scrape time."""
        self.registry.register(_RenderCollector(counts))

    def watch_router(self, router: Router) -> None:
        """Each replica's state, load, attempts and errors, read at scrape time."""
        self.registry.register(RouterCollector(router))

    def watch_redis(self, up: Callable[[], bool],
                    fallbacks: Callable[[], dict[str, int]],
                    trips: Callable[[], Mapping[str, int]] = dict) -> None:
        """With Redis: whether it answers, the limit checks this process answered alone
        because it did not, and its round trips to Redis, read at scrape time."""
        Gauge("chatgate_redis_up", "1 while Redis answers (limits are global), else 0 "
              "(limits are per process)", registry=self.registry).set_function(
                  lambda: 1 if up() else 0)
        self.registry.register(_Counts(
            "chatgate_limit_fallbacks", "Rate-limit checks and upstream requests limited by "
            "this process alone because Redis did not answer, by limit", "limit", fallbacks))
        self.registry.register(_Counts(
            "chatgate_redis_round_trips", "Round trips to Redis (pipelines of script calls): "
            "all, and those a request waited on", "kind",
            lambda: {kind: trips().get(stat, 0)
                     for kind, stat in (("all", "round_trips"), ("waited", "waited"))}))

    def watch_storage(self, stats: Callable[[], StorageStats]) -> None:
        """The database's writes and the transactions they shared, read at scrape time."""
        self.registry.register(_Counts(
            "chatgate_db_writes", "Writes to the database: all of them (write), the "
            "transactions that committed them together (batch), writes run again after losing "
            "to another node's transaction (retry), batches run again op by op after one of "
            "their writes failed (replay)", "kind",
            lambda: {"write": stats().writes, "batch": stats().batches,
                     "retry": stats().retries, "replay": stats().replays}))

    def first_token(self, model: str, replica: str, seconds: float) -> None:
        """One attempt's time to its first token on one replica."""
        self.replica_ttft.of(model, replica).observe(seconds)

    def readiness(self, problems: list[str], ready: bool) -> None:
        """One readiness check's outcome: the kinds (fixed words) of its problems."""
        self.ready.set(1 if ready else 0)
        for kind in problems:
            self.not_ready.inc(kind)

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
            self.tokens.inc("in", by=_int(usage.get("prompt_tokens")))
            self.tokens.inc("out", by=_int(usage.get("completion_tokens")))
        else:
            self.upstream_errors.inc(_kind(outcome.error))

    def render(self) -> bytes:
        """The text exposition format (this process's series)."""
        return generate_latest(self.registry)

    async def exposition(self) -> bytes:
        """What /metrics shows: every process of this server together, or this one alone."""
        return await self.shared.render() if self.shared is not None else self.render()


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


class _RenderCollector(Collector):
    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("chatgate_render", "Assistant replies asked for as HTML, "
                                     "by result", labels=["result"])
        for result, count in self._counts().items():
            family.add_metric([result], count)
        yield family


class _Counts(Collector):
    """A counter family of one label, its values read at scrape time."""

    def __init__(self, name: str, doc: str, label: str,
                 counts: Callable[[], Mapping[str, int]]) -> None:
        self._name, self._doc, self._label = name, doc, label
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._doc, labels=[self._label])
        for value, count in self._counts().items():
            family.add_metric([value], count)
        yield family


def _kind(error: Exception) -> str:
    """A fixed word for an error's class (never its message)."""
    name = type(error).__name__
    return {"UpstreamTimeout": "timeout", "UpstreamRejected": "rejected",
            "UpstreamError": "unavailable", "JobCancelled": "cancelled",
            "ShuttingDown": "shutdown", "ModelUnavailable": "model_unavailable"}.get(name, "other")


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _le(bound: float) -> str:
    """A bucket bound as prometheus-client writes it (0.5 → "0.5", 1 → "1.0")."""
    return repr(float(bound))
