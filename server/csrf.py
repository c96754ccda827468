"""CSRF defence for cookie-authenticated writes: the Origin (or Referer) must be ours."""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web

from .config import ServerConfig
from .errors import ApiError
from .forwarded import own_origin


def check_origin(request: web.Request, config: ServerConfig) -> None:
    """Refuse (403) a cookie-authenticated write from any origin but ours or a listed one."""
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
    if origin == own_origin(request, config.trust_forwarded) or origin in config.cors_origins:
        return
    raise ApiError(403, "csrf_rejected", "cross-site request refused")
