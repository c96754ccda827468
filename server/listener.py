"""The listening socket's own rules: a cap on open connections, a quiet JSON answer to
malformed requests, and our own Server header (aiohttp's names its and Python's versions)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from .logthrottle import LOG_INTERVAL_S, Throttle
from .middleware.headers import SERVER_NAME

log = logging.getLogger(__name__)
_malformed = Throttle(LOG_INTERVAL_S)
_refused = Throttle(LOG_INTERVAL_S)


def error_bytes(code: str, message: str,
                headers: dict[str, str] | None = None) -> tuple[bytes, dict[str, str]]:
    """A JSON error body in our shape and its headers, for answers made below the app."""
    body = orjson.dumps({"error": {"code": code, "message": message}})
    head = {"Content-Type": "application/json", "Server": SERVER_NAME, "Connection": "close",
            **(headers or {})}
    return body, head


class _Handler(RequestHandler):
    """aiohttp's connection handler, answering requests it cannot parse in our JSON shape
    and logging them at most once a minute, without the traceback anyone could trigger."""

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """The response for a request that failed below the app (unparseable, mostly)."""
        if status >= 500 or not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        held = _malformed.allow()
        if held is not None:
            more = f" ({held} more not logged)" if held else ""
            log.info("malformed request from %s: %s%s", request.remote,
                     type(exc).__name__, more)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot answer the error")
        if isinstance(exc, LineTooLong):
            body, head = error_bytes("headers_too_large",
                                     "request line or a header is too long")
            status = 431
        else:
            body, head = error_bytes("bad_request", "malformed HTTP request")
        response = web.Response(status=status, body=body, headers=head)
        response.force_close()
        return response


def _refusal() -> bytes:
    body, head = error_bytes("too_many_connections",
                             "the server has too many open connections; try again",
                             {"Retry-After": "1"})
    lines = "".join(f"{name}: {value}\r\n" for name, value in head.items())
    return (f"HTTP/1.1 503 Service Unavailable\r\n{lines}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


_REFUSAL = _refusal()


class _Refusal(asyncio.Protocol):
    """Answers a connection over the cap with 503 and closes it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the refusal at once; the request itself is read only to be dropped."""
        # A TCP transport (uvloop's does not subclass asyncio.Transport, so no isinstance).
        tcp = cast(asyncio.WriteTransport, transport)
        tcp.write(_REFUSAL)
        # Closing with the request unread would reset the connection, and the client could
        # miss the 503: drop what arrives for a moment, then close.
        asyncio.get_running_loop().call_later(1.0, tcp.close)

    def data_received(self, data: bytes) -> None:
        """Dropped: the answer is the same whatever was asked."""

    def eof_received(self) -> bool:
        """The client is done: close now (False tells asyncio to close the transport)."""
        return False


class CappedSite(web.BaseSite):
    """A TCP site whose connections are `_Handler`s, at most `max_connections` at once."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *, backlog: int,
                 max_connections: int, handler_args: dict[str, Any]) -> None:
        super().__init__(runner, backlog=backlog)
        self._where = (host, port)
        self._max = max_connections
        self._args = handler_args

    @property
    def name(self) -> str:
        """The site's URL, as aiohttp's sites name themselves."""
        return f"http://{self._where[0]}:{self._where[1]}"

    def _protocol(self) -> asyncio.BaseProtocol:
        server = self._runner.server
        assert server is not None
        if len(server.connections) >= self._max:
            held = _refused.allow()
            if held is not None:
                log.warning("connection refused: %d open connections is the cap "
                            "(server.max_connections)%s", self._max,
                            f"; {held} more refused since the last warning" if held else "")
            return _Refusal()
        return _Handler(server, loop=asyncio.get_running_loop(), **self._args)

    async def start(self) -> None:
        """Listen; each accepted connection is handled or refused by `_protocol`."""
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, *self._where,
                                                backlog=self._backlog, reuse_address=True)
