"""Request metrics: a count per route (tests and benchmarks read it) and the Prometheus series
for requests, their duration and the overhead chatgate adds to a model request."""

from __future__ import annotations

from collections import Counter

from aiohttp import web

from .. import keys
from ..services.metrics import Metrics
from .timing import listen


def setup_metrics(app: web.Application) -> None:
    """Count and time each request under its route's pattern, e.g. 'GET /api/auth/verify'."""
    counts: Counter[str] = Counter()
    app[keys.REQUESTS] = counts
    app[keys.METRICS] = metrics = Metrics()

    def done(request: web.Request, route: str, status: int, spent: float) -> None:
        counts[f"{request.method} {route}"] += 1
        metrics.request_done(request.method, route, status, spent, request.get(keys.UPSTREAM_S))

    listen(app, done)
