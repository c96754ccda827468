"""Request counters per route, for /metrics-style checks in tests and benchmarks."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable

from aiohttp import web

from .. import keys

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def count_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count each request under its route's pattern, e.g. 'GET /api/auth/verify'."""
    resource = request.match_info.route.resource
    name = resource.canonical if resource is not None else "unmatched"
    request.app[keys.REQUESTS][f"{request.method} {name}"] += 1
    return await handler(request)


def setup_metrics(app: web.Application) -> None:
    """Install the counter (cheap: one dict increment per request)."""
    app[keys.REQUESTS] = Counter()
    app.middlewares.append(count_middleware)
