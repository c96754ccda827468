"""The client for one model server's OpenAI-compatible API, over its own aiohttp ClientSession.

One call here is one attempt: retries and failover to another replica are the router's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

from .errors import UpstreamError, UpstreamRejected, UpstreamTimeout
from .job import CompletionRequest, Ending, ForwardRequest
from .stream import Progress, message_of, read_chat, read_stream, read_whole

# 429 too: a model server (or its proxy) that says it is too busy is busy for us, not wrong
# about the request.
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_JSON = {"Content-Type": "application/json"}
METRICS_LIMIT = 4 << 20  # a /metrics page larger than this is not vLLM's: not read


@dataclass(frozen=True)
class UpstreamSettings:
    """How long to wait for a model server and how often to try (the `llm` section)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    api_key: str = ""
    model: str = ""
    connect_timeout_s: float = 5.0
    first_token_timeout_s: float = 60.0
    request_timeout_s: float = 600.0
    retries: int = 2
    retry_backoff_s: float = 0.25


class Unreachable(UpstreamError):
    """Nothing listens at the server's address (or it cannot be reached at all)."""


class Retryable(Exception):
    """A failure before the first token: safe to try again. `reason` tells the router's health
    tracking what happened: connect, reset, status, timeout."""

    def __init__(self, error: UpstreamError, reason: str) -> None:
        super().__init__(str(error))
        self.error = error
        self.reason = reason


def redact_url(url: str) -> str:
    """The URL fit to show: credentials (`user:pass@`) and the query string become ***."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "***"
    host = f"[{host}]" if ":" in host else host
    netloc = ("***@" if "@" in parts.netloc else "") + host + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", ""))


def create_session(pool_size: int, settings: UpstreamSettings,
                   api_key: str | None = None) -> aiohttp.ClientSession:
    """One model server's session: keep-alive, sized to what may be in flight, with timeouts.
    `api_key` (default: the settings') is sent as a bearer on every request."""
    # Idle connections are dropped before vLLM's server would (uvicorn: 5 s), so a worker never
    # sends on a connection the other side is closing.
    connector = aiohttp.TCPConnector(limit=pool_size, limit_per_host=pool_size,
                                     keepalive_timeout=4, enable_cleanup_closed=True)
    timeout = aiohttp.ClientTimeout(total=settings.request_timeout_s,
                                    sock_connect=settings.connect_timeout_s,
                                    sock_read=settings.first_token_timeout_s)
    key = settings.api_key if api_key is None else api_key
    headers = {"Authorization": f"Bearer {key}"} if key else None
    # No cookie jar: vLLM sets no cookies, and skipping it saves work on every call.
    return aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers,
                                 raise_for_status=False, cookie_jar=aiohttp.DummyCookieJar())


class UpstreamClient:
    """One model server: chat completions, pass-through requests, its model list and load."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str,
                 probe_session: aiohttp.ClientSession | None = None, api_key: str = "") -> None:
        self._session = session
        # Health checks get their own connections, so a pool busy streaming never fails them.
        self._probe_session = probe_session or session
        self._probe_headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._url = base_url.rstrip("/")
        # vLLM serves /metrics and /health beside /v1, not under it.
        self._root = self._url[:-3] if self._url.endswith("/v1") else self._url
        # Errors never carry the URL (it may hold user:pass@); operators see this one.
        self.shown_url = redact_url(self._url)

    async def list_models(self, timeout_s: float = 10.0) -> list[str]:
        """The model ids the server answers GET /models with (a 4xx is UpstreamRejected)."""
        try:
            async with self._probe_session.get(
                    f"{self._url}/models", headers=self._probe_headers,
                    timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                if 400 <= resp.status < 500:
                    raise UpstreamRejected(f"GET /models answered {resp.status}", resp.status)
                if resp.status != 200:
                    raise UpstreamError(f"GET /models answered {resp.status}")
                data = await resp.json(loads=orjson.loads, content_type=None)
        except aiohttp.ClientConnectorError as err:
            raise Unreachable(f"cannot list models: {type(err).__name__}") from err
        except (TimeoutError, aiohttp.ClientError, ValueError) as err:
            raise UpstreamError(f"cannot list models: {type(err).__name__}") from err
        try:
            return [str(model["id"]) for model in data["data"]]
        except (KeyError, TypeError) as err:
            raise UpstreamError("cannot list models: not a model list") from err

    async def load(self, timeout_s: float = 10.0) -> str | None:
        """The server's Prometheus text from GET /metrics, or None if it has none (a 5xx is
        an UpstreamError: it may have some next time)."""
        try:
            # With our key: a proxy that guards the server may guard its /metrics too.
            async with self._probe_session.get(
                    f"{self._root}/metrics", headers=self._probe_headers,
                    timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                if resp.status >= 500:  # failing for now, not a server without metrics
                    raise UpstreamError(f"GET /metrics answered {resp.status}")
                if resp.status != 200 or (resp.content_length or 0) > METRICS_LIMIT:
                    return None
                # read(n) gives only what one network read brought: the page is read whole.
                data = bytearray()
                async for piece in resp.content.iter_any():
                    data += piece
                    if len(data) > METRICS_LIMIT:
                        return None
        except (TimeoutError, aiohttp.ClientError) as err:
            raise UpstreamError(f"cannot read metrics: {type(err).__name__}") from err
        return data.decode("utf-8", "replace")

    async def complete(self, model: str, request: CompletionRequest,
                       on_delta: Callable[[str], None], progress: Progress) -> Ending:
        """One attempt at streaming a chat reply, calling on_delta per piece."""
        body = {"model": model, "messages": request.messages, "stream": True,
                "stream_options": {"include_usage": True},
                "max_tokens": request.max_tokens, "temperature": request.temperature}
        return await _guarded(progress, self._post(
            "/chat/completions", body, _JSON, lambda resp: read_chat(resp, on_delta, progress)))

    async def forward(self, model: str, request: ForwardRequest,
                      on_raw: Callable[[bytes], None], progress: Progress) -> Ending:
        """One attempt at passing an OpenAI request on (for the server's own name of the model)
        and its answer back as bytes, reading only usage, finish and errors."""
        headers = {**_JSON, "X-Request-Id": request.request_id}
        body = request.body if request.body.get("model") == model \
            else {**request.body, "model": model}
        if request.stream:
            read: Callable[[aiohttp.ClientResponse], Awaitable[Ending]] = \
                lambda resp: read_stream(resp, request, on_raw, progress)  # noqa: E731
        else:
            read = lambda resp: read_whole(resp, on_raw, progress)  # noqa: E731
        # A whole answer comes at the end: its timeout may be the model still generating, so
        # it is not run again on another replica (each would generate it all once more).
        return await _guarded(progress, self._post(request.path, body, headers, read),
                              retry_timeout=request.stream)

    async def _post(self, path: str, body: dict[str, Any], headers: dict[str, str],
                    read: Callable[[aiohttp.ClientResponse], Awaitable[Ending]]) -> Ending:
        # The session's sock_read timeout (first_token_timeout_s) bounds every silence: the
        # wait for the first token and each pause after it; `total` bounds the whole reply.
        resp = await self._session.post(f"{self._url}{path}", data=orjson.dumps(body),
                                        headers=headers)
        try:
            if resp.status != 200:
                raise await _status_error(resp)
            ending = await read(resp)
            resp.release()
            return ending
        except BaseException:
            resp.close()  # drop the connection: vLLM aborts the generation
            raise


async def _guarded(progress: Progress, attempt: Awaitable[Ending],
                   retry_timeout: bool = True) -> Ending:
    """One attempt, its transport failures sorted into retryable (nothing sent) or final;
    a read timeout is final unless `retry_timeout` (no first token: a streamed reply)."""
    try:
        return await attempt
    except TimeoutError as err:
        if isinstance(err, aiohttp.ConnectionTimeoutError):
            raise Retryable(UpstreamError("timed out connecting to the model"), "connect") \
                from err
        timeout = UpstreamTimeout("the model did not answer in time")
        if progress.sent or not retry_timeout:
            raise timeout from err
        raise Retryable(timeout, "timeout") from err
    except aiohttp.ClientConnectorError as err:
        raise Retryable(UpstreamError(
            f"the model server connection failed: {type(err).__name__}"), "connect") from err
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError,
            aiohttp.ClientConnectionResetError) as err:
        error = UpstreamError(f"the model server connection failed: {type(err).__name__}")
        if progress.sent:
            raise error from err
        raise Retryable(error, "reset") from err
    except aiohttp.ClientError as err:
        raise UpstreamError(f"the model server failed: {type(err).__name__}") from err


async def _status_error(resp: aiohttp.ClientResponse) -> Exception:
    """The error for a non-200 answer: 429/502/503/504 retryable, other 4xx rejected."""
    try:
        detail = message_of(orjson.loads(await resp.content.read(65536)))
    except Exception:  # noqa: BLE001 - the body is only for the message
        detail = resp.reason or ""
    message = f"the model server answered {resp.status}: {detail}"[:500]
    if resp.status in _RETRY_STATUSES:
        return Retryable(UpstreamError(message), "status")
    if 400 <= resp.status < 500:
        return UpstreamRejected(message, resp.status, detail)
    return UpstreamError(message)
