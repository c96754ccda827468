"""CORS, off unless `server.cors_origins` lists origins; then only those, with credentials."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
_HEADERS = "Authorization, Content-Type, X-Session-Id"  # the last: /v1 replica affinity
_EXPOSED = "X-Request-Id, Retry-After"  # readable by a listed origin's scripts too


def add_vary(response: web.StreamResponse, name: str) -> None:
    """Add `name` to the response's Vary header, keeping what is there."""
    present = [part.strip() for part in response.headers.get(hdrs.VARY, "").split(",")
               if part.strip()]
    if name.lower() not in (part.lower() for part in present):
        response.headers[hdrs.VARY] = ", ".join([*present, name])


def setup_cors(app: web.Application, origins: tuple[str, ...]) -> None:
    """Answer preflights and tag responses for the listed origins; do nothing if none."""
    if not origins:
        return
    allowed = frozenset(origins)

    @web.middleware
    async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin in allowed and request.method == "OPTIONS" \
                and "Access-Control-Request-Method" in request.headers:
            return web.Response(status=204, headers={
                "Access-Control-Allow-Methods": _METHODS,
                "Access-Control-Allow-Headers": _HEADERS,
                "Access-Control-Max-Age": "600",
            })
        return await handler(request)

    async def tag(request: web.Request, response: web.StreamResponse) -> None:
        # On prepare, not after the handler: a stream's headers are sent before it returns.
        add_vary(response, "Origin")  # every answer depends on it, unlisted origins' too
        origin = request.headers.get("Origin")
        if origin in allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Access-Control-Expose-Headers"] = _EXPOSED

    app.middlewares.append(cors_middleware)
    app.on_response_prepare.append(tag)
