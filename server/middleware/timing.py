"""How a request ended and how long it took, measured once and told to every reporter
(the access log and the metrics), so each request pays for one timer, not one per reporter."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from .. import keys

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Listener = keys.RequestDone


def route_of(request: web.Request) -> str:
    """The matched route's pattern (never the path: ids and tokens stay out), or 'unmatched'."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def listen(app: web.Application, listener: Listener) -> None:
    """Call `listener(request, route, status, seconds)` after every request.

    The first listener installs the timing middleware where the app's middlewares stand.
    """
    listeners = app.get(keys.REQUEST_DONE)
    if listeners is None:
        listeners = app[keys.REQUEST_DONE] = []
        app.middlewares.append(_timing(listeners))
    listeners.append(listener)


def _timing(listeners: list[Listener]) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def timing_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as err:
            status = err.status
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away first (nginx's word for it), not our failure
            raise
        finally:
            spent = time.perf_counter() - started
            route = route_of(request)
            for listener in listeners:
                listener(request, route, status, spent)

    return timing_middleware
