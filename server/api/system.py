"""Service endpoints: liveness, readiness and the OpenAPI document."""

from __future__ import annotations

import functools
import ipaddress
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from .. import keys
from ..middleware.auth import optional_principal
from ..middleware.forwarded import client_ip
from ..services.gate import is_admin
from .assets import STATIC_DIR
from .responses import json_response

OPENAPI_PATH = Path(__file__).resolve().parent.parent / "openapi.json"


async def health(request: web.Request) -> web.Response:
    """200 while the process runs."""
    return json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """200 when some model has a replica that answers and the pool is taking work, else 503
    ("degraded" with 200: some replicas are out). Everyone learns only that; an admin's
    request also gets why, each model's replicas and the queue."""
    ready = await request.app[keys.STATUS].ready()
    status = "ok" if not ready.problems else "degraded" if ready.ready else "unavailable"
    body: dict[str, Any] = {"status": status}
    principal = await optional_principal(request)
    if principal is not None and is_admin(principal.user):
        body.update(model=ready.model, model_server=ready.model_server, queue=ready.queue,
                    problems=[{"kind": p.kind, "detail": p.detail} for p in ready.problems],
                    models=ready.models, **({"coordination": ready.coordination}
                                            if ready.coordination is not None else {}))
    return json_response(body, status=200 if ready.ready else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format, for the addresses in `metrics.allow_from` only."""
    config = request.app[keys.CONFIG]
    # Behind a proxy on this host every peer is loopback: judge the client it forwards for.
    remote = client_ip(request, config.server.proxy_hops)
    if not config.metrics.enabled or not _allowed(remote, config.metrics.allow_from):
        raise web.HTTPNotFound()  # as if it were not there: nothing to probe
    return web.Response(body=await request.app[keys.METRICS].exposition(),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


def _allowed(remote: str, allow_from: tuple[str, ...]) -> bool:
    """Whether the peer address is in one of the listed addresses or networks."""
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    return any(address in network for network in _networks(allow_from))


@functools.lru_cache(maxsize=4)
def _networks(allow_from: tuple[str, ...]) -> tuple[IPv4Network | IPv6Network, ...]:
    """The configured networks, parsed once (the config checked them at load)."""
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in allow_from)


async def openapi(request: web.Request) -> web.FileResponse:
    """The OpenAPI 3 description of this API."""
    return web.FileResponse(OPENAPI_PATH, headers={"Content-Type": "application/json"})


async def index(request: web.Request) -> web.FileResponse:
    """The web client's page (revalidated on each load through its ETag)."""
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})
