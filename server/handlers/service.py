"""Service endpoints: liveness, readiness and the OpenAPI document."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from .. import keys
from ..responses import json_response

OPENAPI_PATH = Path(__file__).resolve().parent.parent / "openapi.json"
INDEX_PATH = Path(__file__).resolve().parent.parent / "static" / "index.html"


async def health(request: web.Request) -> web.Response:
    """200 while the process runs."""
    return json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """200 when the model server answers and the pool is taking work, else 503 with why."""
    pool = request.app[keys.POOL]
    upstream = request.app[keys.UPSTREAM]
    problems: list[str] = []
    if pool.closed:
        problems.append(pool.closed)
    if pool.live_workers < request.app[keys.CONFIG].queue.workers:
        problems.append(f"only {pool.live_workers} workers alive")
    try:
        await upstream.probe()
    except Exception as err:  # noqa: BLE001 - reported, not raised
        problems.append(f"model server unreachable: {err}")
    body = {"status": "ok" if not problems else "unavailable", "model": upstream.model,
            "queue": {"waiting": pool.queue.qsize(), "max_size": pool.queue.maxsize,
                      "running": pool.stats.running, "workers": pool.live_workers},
            "problems": problems}
    return json_response(body, status=200 if not problems else 503)


async def openapi(request: web.Request) -> web.FileResponse:
    """The OpenAPI 3 description of this API."""
    return web.FileResponse(OPENAPI_PATH, headers={"Content-Type": "application/json"})


async def index(request: web.Request) -> web.FileResponse:
    """The web client's page (revalidated on each load through its ETag)."""
    return web.FileResponse(INDEX_PATH, headers={"Cache-Control": "no-cache"})
