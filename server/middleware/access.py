"""Request ids and the access log: every request gets an id (the client's X-Request-Id when
it is sane), returned in the response, passed to the model server and logged once."""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from .. import keys

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger("chatgate.access")
_SANE = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def request_id_of(request: web.Request) -> str:
    """The request's id."""
    return request[keys.REQUEST_ID]


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    rid = request.get(keys.REQUEST_ID)
    if rid is not None:
        response.headers["X-Request-Id"] = rid


def setup_access(app: web.Application, access_log: bool) -> None:
    """Give each request an id; with `access_log`, one structured line per request."""

    @web.middleware
    async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("X-Request-Id", "")
        request[keys.REQUEST_ID] = given if _SANE.fullmatch(given) else secrets.token_hex(16)
        if not access_log:
            return await handler(request)
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as err:
            status = err.status
            raise
        finally:
            _log_line(request, status, time.perf_counter() - started)

    app.on_response_prepare.append(_on_prepare)
    app.middlewares.append(access_middleware)


def _log_line(request: web.Request, status: int, spent: float) -> None:
    resource = request.match_info.route.resource
    principal = request.get(keys.PRINCIPAL)
    upstream = request.get(keys.UPSTREAM_S)
    log.info("method=%s route=%s status=%d duration_ms=%.1f user=%s key=%s request_id=%s "
             "upstream_ms=%s", request.method,
             resource.canonical if resource is not None else "unmatched", status, spent * 1000,
             principal.user["id"] if principal else "-",
             principal.key.id if principal and principal.key else "-",
             request[keys.REQUEST_ID], f"{upstream * 1000:.1f}" if upstream is not None else "-")
