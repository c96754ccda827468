"""CORS, off unless `server.cors_origins` lists origins; then only those, with credentials."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_METHODS = "GET, POST, PATCH, DELETE, OPTIONS"
_HEADERS = "Authorization, Content-Type"


def setup_cors(app: web.Application, origins: tuple[str, ...]) -> None:
    """Answer preflights and tag responses for the listed origins; do nothing if none."""
    if not origins:
        return
    allowed = frozenset(origins)

    @web.middleware
    async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin not in allowed:
            return await handler(request)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            response: web.StreamResponse = web.Response(status=204, headers={
                "Access-Control-Allow-Methods": _METHODS,
                "Access-Control-Allow-Headers": _HEADERS,
                "Access-Control-Max-Age": "600",
            })
        else:
            response = await handler(request)
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Vary"] = "Origin"
        return response

    app.middlewares.append(cors_middleware)
