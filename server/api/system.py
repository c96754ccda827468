"""Service endpoints: liveness, readiness and the OpenAPI document."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from .. import keys
from .responses import json_response

OPENAPI_PATH = Path(__file__).resolve().parent.parent / "openapi.json"
INDEX_PATH = Path(__file__).resolve().parent.parent / "static" / "index.html"


async def health(request: web.Request) -> web.Response:
    """200 while the process runs."""
    return json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """200 when the model server answers and the pool is taking work, else 503 with why."""
    ready = await request.app[keys.STATUS].ready()
    body = {"status": "unavailable" if ready.problems else "ok", "model": ready.model,
            "queue": ready.queue, "problems": ready.problems}
    return json_response(body, status=503 if ready.problems else 200)


async def openapi(request: web.Request) -> web.FileResponse:
    """The OpenAPI 3 description of this API."""
    return web.FileResponse(OPENAPI_PATH, headers={"Content-Type": "application/json"})


async def index(request: web.Request) -> web.FileResponse:
    """The web client's page (revalidated on each load through its ETag)."""
    return web.FileResponse(INDEX_PATH, headers={"Cache-Control": "no-cache"})
