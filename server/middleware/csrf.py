"""CSRF defence for cookie-authenticated writes: the Origin (or Referer) must be ours."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from .. import keys
from .errors import ApiError
from .forwarded import own_origin

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def check_origin(request: web.Request, proxy_hops: int, allowed: tuple[str, ...]) -> None:
    """Refuse (403) a request from any origin but ours or a listed one."""
    origin = request.headers.get("Origin")
    if not origin or origin == "null":
        referer = request.headers.get("Referer")
        if referer:
            parts = urlsplit(referer)
            origin = f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None
        else:
            origin = None
    if origin is None:
        raise ApiError(403, "csrf_rejected", "cookie-authenticated requests must carry an Origin")
    if origin == own_origin(request, proxy_hops) or origin in allowed:
        return
    raise ApiError(403, "csrf_rejected", "cross-site request refused")


def setup_csrf(app: web.Application, proxy_hops: int, allowed: tuple[str, ...]) -> None:
    """Check the origin of every write that a session cookie authenticated (bearer tokens
    cannot be sent by another site, so they need no check)."""

    @web.middleware
    async def csrf_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method not in _SAFE_METHODS and request.get(keys.VIA_COOKIE):
            check_origin(request, proxy_hops, allowed)
        return await handler(request)

    app.middlewares.append(csrf_middleware)
