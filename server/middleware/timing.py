"""How a request ended and how long it took, for the middlewares that report it."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def route_of(request: web.Request) -> str:
    """The matched route's pattern (never the path: ids and tokens stay out), or 'unmatched'."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


async def timed(request: web.Request, handler: Handler,
                done: Callable[[int, float], None]) -> web.StreamResponse:
    """Run the handler, then call `done(status, seconds)` whether it answered or raised."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as err:
        status = err.status
        raise
    finally:
        done(status, time.perf_counter() - started)
