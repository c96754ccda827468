"""Who the client is and how it reached us, honouring proxy headers only when trusted."""

from __future__ import annotations

from aiohttp import web


def client_ip(request: web.Request, trust_forwarded: bool) -> str:
    """The client's address: behind a trusted proxy, the hop that proxy added (the last one).

    Earlier hops come from the client itself and could be anything, so they never count.
    """
    if trust_forwarded:
        forwarded = request.headers.get("X-Forwarded-For")
        if forwarded:
            return forwarded.rsplit(",", 1)[-1].strip()
    return request.remote or "unknown"


def is_https(request: web.Request, trust_forwarded: bool) -> bool:
    """Whether the client used HTTPS, directly or through a trusted proxy."""
    if request.secure:
        return True
    return trust_forwarded and request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def own_origin(request: web.Request, trust_forwarded: bool) -> str:
    """The origin the browser sees for this server."""
    scheme = "https" if is_https(request, trust_forwarded) else "http"
    host = request.headers.get("X-Forwarded-Host") if trust_forwarded else None
    return f"{scheme}://{host or request.host}"
