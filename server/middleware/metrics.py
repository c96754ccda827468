"""Request metrics: a count per route (tests and benchmarks read it) and the Prometheus series
for requests, their duration and the overhead chatgate adds to a model request."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable

from aiohttp import web

from .. import keys
from ..services.metrics import Metrics
from .timing import route_of, timed

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def count_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time each request under its route's pattern, e.g. 'GET /api/auth/verify'."""
    route = route_of(request)
    request.app[keys.REQUESTS][f"{request.method} {route}"] += 1
    metrics = request.app[keys.METRICS]
    return await timed(request, handler, lambda status, spent: metrics.request_done(
        request.method, route, status, spent, request.get(keys.UPSTREAM_S)))


def setup_metrics(app: web.Application) -> None:
    """Install the counters (a dict increment and two observations per request)."""
    app[keys.REQUESTS] = Counter()
    app[keys.METRICS] = Metrics()
    app.middlewares.append(count_middleware)
