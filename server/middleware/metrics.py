"""Request metrics: the Prometheus series for requests by route and status, their duration
and the overhead chatgate adds to a model request."""

from __future__ import annotations

from aiohttp import web

from .. import keys
from ..services.metrics import Metrics
from .timing import listen


def setup_metrics(app: web.Application) -> None:
    """Count and time each request under its route's pattern, e.g. 'GET /api/auth/verify'."""
    app[keys.METRICS] = metrics = Metrics()

    def done(request: web.Request, route: str, status: int, spent: float) -> None:
        metrics.request_done(request.method, route, status, spent, request.get(keys.UPSTREAM_S))

    listen(app, done)
