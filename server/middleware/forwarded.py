"""Who the client is and how it reached us, honouring proxy headers only from trusted hops.

`hops` is the number of proxies of ours in front of the server (0: none, headers ignored).
Each proxy appends what it saw, to the last header line or as a line of its own, so every
line of a header is joined into one list and the entry our outermost proxy added is the
`hops`-th from the end; entries before it come from the client and could be anything.
"""

from __future__ import annotations

from aiohttp import web


def forwarded_hop(request: web.Request, name: str, hops: int) -> str | None:
    """The entry of header `name` that our outermost trusted proxy added (None: no entry)."""
    if hops <= 0:
        return None
    entries = [entry.strip() for line in request.headers.getall(name, ())
               for entry in line.split(",")]
    entries = [entry for entry in entries if entry]
    if not entries:
        return None
    # Fewer entries than proxies: the request skipped some of them; the first is the earliest.
    return entries[-hops] if len(entries) >= hops else entries[0]


def client_ip(request: web.Request, hops: int) -> str:
    """The client's address: behind trusted proxies, the hop the outermost one added."""
    return forwarded_hop(request, "X-Forwarded-For", hops) or request.remote or "unknown"


def is_https(request: web.Request, hops: int) -> bool:
    """Whether the client used HTTPS, directly or through a trusted proxy."""
    if request.secure:
        return True
    return (forwarded_hop(request, "X-Forwarded-Proto", hops) or "").lower() == "https"


def own_origin(request: web.Request, hops: int) -> str:
    """The origin the browser sees for this server."""
    scheme = "https" if is_https(request, hops) else "http"
    host = forwarded_hop(request, "X-Forwarded-Host", hops)
    return f"{scheme}://{host or request.host}"
