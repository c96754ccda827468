"""Request ids and the access log: every request gets an id (the client's X-Request-Id when
it is sane), returned in the response, passed to the model server and logged once.

The log costs the event loop one tuple a request: a thread formats and writes the lines in
batches every 0.1 s (through the `logging` module would cost ten times more per request).
"""

from __future__ import annotations

import functools
import itertools
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TextIO

from aiohttp import web

from .. import keys
from ..batches import BatchWriter
from .timing import listen

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_SANE = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# Ids need to be unique, not secret: a random prefix per process and a counter (cheaper than
# 16 random bytes a request).
_ID_PREFIX = secrets.token_hex(8)
_ids = itertools.count(1)


def new_request_id() -> str:
    """A request id unique across processes and restarts (32 hex characters at most)."""
    return f"{_ID_PREFIX}{next(_ids):016x}"
# (wall time, method, route, status, seconds, user id, key id, request id, upstream seconds)
Entry = tuple[float, str, str, int, float, object, object, str, "float | None"]


def request_id_of(request: web.Request) -> str:
    """The request's id."""
    return request[keys.REQUEST_ID]


def _access_writer(stream: TextIO | None) -> BatchWriter[Entry]:
    """Lines kept in memory and written by a thread of their own, in batches (to `stream`,
    standard error by default)."""

    def write(entries: list[Entry]) -> None:
        out = stream or sys.stderr
        out.write("".join(map(_format, entries)))
        out.flush()

    return BatchWriter(write, "access-log")


@functools.lru_cache(maxsize=4)
def _second(whole: int) -> str:
    """The formatted second, reused by every line of that second."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(whole))


def _format(entry: Entry) -> str:
    when, method, route, status, spent, user, key, rid, upstream = entry
    stamp = _second(int(when))
    up = f"{upstream * 1000:.1f}" if upstream is not None else "-"
    return (f"{stamp},{int(when * 1000) % 1000:03d} INFO chatgate.access: method={method} "
            f"route={route} status={status} duration_ms={spent * 1000:.1f} user={user} "
            f"key={key} request_id={rid} upstream_ms={up}\n")


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    rid = request.get(keys.REQUEST_ID)
    if rid is not None:
        response.headers["X-Request-Id"] = rid


def setup_access(app: web.Application, access_log: bool, stream: TextIO | None = None) -> None:
    """Give each request an id; with `access_log`, one line per request (to `stream`,
    standard error by default)."""
    writer = _access_writer(stream) if access_log else None

    @web.middleware
    async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("X-Request-Id", "")
        request[keys.REQUEST_ID] = given if given and _SANE.fullmatch(given) else new_request_id()
        return await handler(request)

    app.on_response_prepare.append(_on_prepare)
    app.middlewares.append(access_middleware)
    if writer is None:
        return

    def done(request: web.Request, route: str, status: int, spent: float) -> None:
        principal = request.get(keys.PRINCIPAL)
        writer.add((time.time(), request.method, route, status, spent,
                    principal.user["id"] if principal else "-",
                    principal.key.id if principal and principal.key else "-",
                    request[keys.REQUEST_ID], request.get(keys.UPSTREAM_S)))

    async def running(_: web.Application) -> AsyncIterator[None]:
        writer.start()
        yield
        writer.stop()

    listen(app, done)
    app.cleanup_ctx.append(running)
