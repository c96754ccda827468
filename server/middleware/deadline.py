"""A deadline for each request body: a client dripping one byte at a time is cut off.

Its request's header deadline (server/listener.py) ends here, as the app gets the request."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from .errors import ApiError, invalid

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def setup_header_deadline(app: web.Application) -> None:
    """Tell the connection its request's headers came (the listener's deadline is met)."""

    @web.middleware
    async def headers_came(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = getattr(request.protocol, "request_started", None)
        if started is not None:  # the listener's connections (not the test client's)
            started()
        return await handler(request)

    app.middlewares.append(headers_came)


def setup_body_deadline(app: web.Application, timeout_s: float) -> None:
    """Read each body whole (at most `client_max_size`) within `timeout_s`, before the
    handler runs; too slow: 408 and the connection closes. Installed after authentication,
    so nobody unauthenticated gets a body buffered outside the public routes."""

    @web.middleware
    async def body_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
        # A body that came whole with the headers (most JSON bodies) needs no deadline; a
        # handler marked `reads_own_body` (imports, past max_body_bytes) reads it itself.
        own = getattr(request.match_info.handler, "reads_own_body", False)
        if request.body_exists and not own and not request.content.is_eof():
            try:
                async with asyncio.timeout(timeout_s):
                    await request.read()  # kept by the request: handlers read it from memory
            except TimeoutError:
                error = ApiError(408, "request_timeout",
                                 f"the request body did not arrive within {timeout_s:g} s")
                response = error.response(openai=request.path.startswith("/v1/"))
                response.force_close()
                return response
            except web.RequestPayloadError as err:  # e.g. a broken chunked encoding
                raise invalid("the request body is malformed") from err
        return await handler(request)

    app.middlewares.append(body_deadline)
