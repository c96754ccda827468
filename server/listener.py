"""The listening socket's own rules: a deadline for request headers, a cap on open
connections, a quiet JSON answer to malformed requests, and our own Server header (aiohttp's
names its and Python's versions)."""

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
    """aiohttp's connection handler, with a deadline for each request's headers, answering
    requests it cannot parse in our JSON shape and logging them at most once a minute,
    without the traceback anyone could trigger."""

    def __init__(self, manager: web.Server, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._since: float | None = None  # when the awaited request's headers began
        self._in_request = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """A new connection: its first request's headers are due within the deadline."""
        super().connection_made(transport)
        self._since = self._loop.time()

    def data_received(self, data: bytes) -> None:
        """Bytes of a next request start its header deadline (aiohttp's keep-alive timer
        only covers silence, and a byte now and then would keep a connection forever)."""
        if self._since is None and not self._in_request:
            self._since = self._loop.time()
        super().data_received(data)

    def request_started(self) -> None:
        """The app got a request (its headers are complete): the deadline is met."""
        self._in_request = True
        self._since = None

    def log_access(self, request: Any, response: web.StreamResponse,
                   time: float | None) -> None:
        """Called once each answer is sent: the next request's headers are not due yet."""
        self._in_request = False
        self._since = None  # answered before the app saw it (a preflight): its headers came too
        super().log_access(request, response, time)

    def overdue(self, now: float) -> bool:
        """Whether the awaited request's headers are later than the deadline."""
        return self._since is not None and now - self._since > self._header_timeout

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
                 max_connections: int, header_timeout: float,
                 handler_args: dict[str, Any], reuse_port: bool = False) -> None:
        super().__init__(runner, backlog=backlog)
        self._where = (host, port)
        self._reuse_port = reuse_port  # several processes on one port: the kernel spreads them
        self._max = max_connections
        self._header_timeout = header_timeout
        self._args = handler_args
        self._sweeper: asyncio.Task[None] | None = None

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
        return _Handler(server, header_timeout=self._header_timeout,
                        loop=asyncio.get_running_loop(), **self._args)

    async def _sweep(self) -> None:
        """Close the connections whose request headers are overdue. One pass a tick for all
        connections costs less than a timer armed and cancelled for every request."""
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        tick = min(1.0, self._header_timeout / 4)
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for handler in server.connections:
                if isinstance(handler, _Handler) and handler.overdue(now):
                    handler.force_close()

    async def stop(self) -> None:
        """Stop listening and sweeping."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        await super().stop()

    async def start(self) -> None:
        """Listen; each accepted connection is handled or refused by `_protocol`."""
        await super().start()
        loop = asyncio.get_running_loop()
        self._sweeper = asyncio.create_task(self._sweep(), name="header-deadlines")
        self._server = await loop.create_server(self._protocol, *self._where,
                                                backlog=self._backlog, reuse_address=True,
                                                reuse_port=self._reuse_port or None)
