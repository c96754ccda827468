"""The client for vLLM's OpenAI-compatible API, over one shared aiohttp ClientSession."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
import orjson

from .errors import UpstreamError, UpstreamRejected, UpstreamTimeout
from .job import CompletionRequest, Ending

log = logging.getLogger(__name__)
_RETRY_STATUSES = frozenset({502, 503, 504})
_JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class UpstreamSettings:
    """Where the model is and how long to wait for it (the `llm` section of the server's config)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    api_key: str = ""
    model: str = ""
    connect_timeout_s: float = 5.0
    first_token_timeout_s: float = 60.0
    request_timeout_s: float = 600.0
    retries: int = 2
    retry_backoff_s: float = 0.25


class _Retryable(Exception):
    """A failure before the first token: safe to try again."""

    def __init__(self, error: UpstreamError) -> None:
        super().__init__(str(error))
        self.error = error


def create_session(pool_size: int, settings: UpstreamSettings) -> aiohttp.ClientSession:
    """The one session all workers share: keep-alive, sized to the pool, with timeouts."""
    # Idle connections are dropped before vLLM's server would (uvicorn: 5 s), so a worker never
    # sends on a connection the other side is closing.
    connector = aiohttp.TCPConnector(limit=pool_size, limit_per_host=pool_size,
                                     keepalive_timeout=4, enable_cleanup_closed=True)
    timeout = aiohttp.ClientTimeout(total=settings.request_timeout_s,
                                    sock_connect=settings.connect_timeout_s,
                                    sock_read=settings.first_token_timeout_s)
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else None
    # No cookie jar: vLLM sets no cookies, and skipping it saves work on every call.
    return aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers,
                                 raise_for_status=False, cookie_jar=aiohttp.DummyCookieJar())


class UpstreamClient:
    """Chat completions with retries before the first token and none after."""

    def __init__(self, session: aiohttp.ClientSession, settings: UpstreamSettings,
                 probe_session: aiohttp.ClientSession | None = None) -> None:
        self._session = session
        # Health checks get their own connection, so a pool busy streaming never fails them.
        self._probe_session = probe_session or session
        self._s = settings
        self._url = settings.base_url.rstrip("/")
        self.model = settings.model

    async def resolve_model(self) -> str:
        """Ask GET /models for the served model when none is configured."""
        if self.model:
            return self.model
        return await self.probe()

    async def probe(self) -> str:
        """Check that the model server answers GET /models; learn the model if unset."""
        timeout = aiohttp.ClientTimeout(total=self._s.connect_timeout_s + 5)
        try:
            async with self._probe_session.get(f"{self._url}/models", timeout=timeout) as resp:
                if resp.status != 200:
                    raise UpstreamError(f"GET /models answered {resp.status}")
                data = await resp.json(loads=orjson.loads)
            served = str(data["data"][0]["id"])
        except (TimeoutError, aiohttp.ClientError, KeyError, IndexError, TypeError,
                ValueError) as err:
            raise UpstreamError(f"cannot list models at {self._url}: {type(err).__name__}") from err
        if not self.model:
            self.model = served
        return self.model

    async def complete(self, request: CompletionRequest, on_delta: Callable[[str], None],
                       before_attempt: Callable[[], Any] | None = None) -> Ending:
        """Stream one reply, calling on_delta per piece; retry only while nothing was sent."""
        attempt = 0
        while True:
            if before_attempt is not None:
                await before_attempt()
            try:
                return await self._attempt(request, on_delta)
            except _Retryable as retry:
                if attempt >= self._s.retries:
                    raise retry.error from None
                delay = self._s.retry_backoff_s * (2 ** attempt) * (0.5 + random.random())
                log.info("upstream attempt %d failed (%s); retrying in %.2fs",
                         attempt + 1, retry.error, delay)
                attempt += 1
                await asyncio.sleep(delay)

    async def _attempt(self, request: CompletionRequest,
                       on_delta: Callable[[str], None]) -> Ending:
        model = self.model or await self.resolve_model()
        body = {"model": model, "messages": request.messages, "stream": True,
                "stream_options": {"include_usage": True}, "max_tokens": request.max_tokens,
                "temperature": request.temperature}
        sent = False
        # The session's sock_read timeout (first_token_timeout_s) bounds every silence: the
        # wait for the first token and each pause after it; `total` bounds the whole reply.
        try:
            resp = await self._session.post(f"{self._url}/chat/completions",
                                            data=orjson.dumps(body), headers=_JSON)
            try:
                if resp.status != 200:
                    raise await _status_error(resp)
                finish, usage = "stop", cast(dict[str, Any], {})
                async for chunks in _events(resp):
                    texts: list[str] = []
                    for chunk in chunks:
                        usage = chunk.get("usage") or usage
                        for choice in chunk.get("choices") or ():
                            text = (choice.get("delta") or {}).get("content")
                            if text:
                                texts.append(text)
                            finish = choice.get("finish_reason") or finish
                    if texts:
                        sent = True
                        on_delta("".join(texts))  # one delta per network read, not per token
                resp.release()
                return Ending(finish, usage)
            except BaseException:
                resp.close()  # drop the connection: vLLM aborts the generation
                raise
        except TimeoutError as err:
            if isinstance(err, aiohttp.ConnectionTimeoutError) and not sent:
                raise _Retryable(UpstreamError("timed out connecting to the model")) from err
            raise UpstreamTimeout("the model did not answer in time") from err
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError,
                aiohttp.ClientPayloadError, aiohttp.ClientOSError,
                aiohttp.ClientConnectionResetError) as err:
            error = UpstreamError(f"the model server connection failed: {type(err).__name__}")
            if sent:
                raise error from err
            raise _Retryable(error) from err
        except aiohttp.ClientError as err:
            raise UpstreamError(f"the model server failed: {type(err).__name__}") from err


async def _events(resp: aiohttp.ClientResponse) -> AsyncIterator[list[dict[str, Any]]]:
    """Parse the SSE body per network read: the `data:` chunks that arrived together, up to
    [DONE]. The body is read to its end so the connection can be reused; a stream cut short
    before [DONE] is an error."""
    done = False
    buffer = b""
    async for data in resp.content.iter_any():
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        if done:
            continue
        chunks: list[dict[str, Any]] = []
        error: UpstreamError | None = None
        for raw in lines:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                done = True
                break
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                chunk = None
            if not isinstance(chunk, dict):
                error = UpstreamError("the model server sent a malformed stream")
                break
            if "error" in chunk or chunk.get("object") == "error":
                error = UpstreamError(f"the model failed: {_message(chunk)}")
                break
            chunks.append(chunk)
        if chunks:
            yield chunks  # what arrived before a bad line still reaches the client
        if error is not None:
            raise error
    if not done:
        raise aiohttp.ServerDisconnectedError("stream ended before [DONE]")


async def _status_error(resp: aiohttp.ClientResponse) -> Exception:
    """The error for a non-200 answer: 502/503/504 retryable, 4xx rejected."""
    try:
        detail = _message(orjson.loads(await resp.content.read(65536)))
    except Exception:  # noqa: BLE001 - the body is only for the message
        detail = resp.reason or ""
    message = f"the model server answered {resp.status}: {detail}"[:500]
    if resp.status in _RETRY_STATUSES:
        return _Retryable(UpstreamError(message))
    if 400 <= resp.status < 500:
        return UpstreamRejected(message, resp.status)
    return UpstreamError(message)


def _message(body: Any) -> str:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return str(inner.get("message", ""))
        return str(inner)
    return ""
