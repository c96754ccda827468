"""The client for vLLM's OpenAI-compatible API, over one shared aiohttp ClientSession."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

from .errors import UpstreamError, UpstreamRejected, UpstreamTimeout
from .job import CompletionRequest, Ending, ForwardRequest

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
        # Errors never carry the URL (it may hold user:pass@); operators see this one.
        self.shown_url = redact_url(self._url)
        self.model = settings.model

    async def resolve_model(self) -> str:
        """Ask GET /models for the served model when none is configured."""
        if self.model:
            return self.model
        return await self.probe()

    async def list_models(self) -> dict[str, Any]:
        """The model server's answer to GET /models, as it is."""
        timeout = aiohttp.ClientTimeout(total=self._s.connect_timeout_s + 5)
        try:
            async with self._probe_session.get(f"{self._url}/models", timeout=timeout) as resp:
                if resp.status != 200:
                    raise UpstreamError(f"GET /models answered {resp.status}")
                data = await resp.json(loads=orjson.loads)
        except (TimeoutError, aiohttp.ClientError, ValueError) as err:
            raise UpstreamError(f"cannot list models: {type(err).__name__}") from err
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise UpstreamError("cannot list models: not a model list")
        return data

    async def probe(self) -> str:
        """Check that the model server answers GET /models; learn the model if unset."""
        try:
            served = str((await self.list_models())["data"][0]["id"])
        except (KeyError, IndexError, TypeError) as err:
            raise UpstreamError(f"cannot list models: {type(err).__name__}") from err
        if not self.model:
            self.model = served
        return self.model

    async def complete(self, request: CompletionRequest, on_delta: Callable[[str], None],
                       before_attempt: Callable[[], Any] | None = None) -> Ending:
        """Stream one reply, calling on_delta per piece; retry only while nothing was sent."""

        async def attempt(progress: _Progress) -> Ending:
            model = self.model or await self.resolve_model()
            body = {"model": model, "messages": request.messages, "stream": True,
                    "stream_options": {"include_usage": True},
                    "max_tokens": request.max_tokens, "temperature": request.temperature}
            return await self._post("/chat/completions", body, _JSON,
                                    lambda resp: _read_chat(resp, on_delta, progress))

        return await self._retrying(attempt, before_attempt)

    async def forward(self, request: ForwardRequest, on_raw: Callable[[bytes], None],
                      before_attempt: Callable[[], Any] | None = None) -> Ending:
        """Pass an OpenAI request on and its answer back as bytes, reading only usage, finish
        and errors; retry only while nothing was passed back."""
        headers = {**_JSON, "X-Request-Id": request.request_id}

        async def attempt(progress: _Progress) -> Ending:
            if request.stream:
                return await self._post(request.path, request.body, headers,
                                        lambda resp: _read_stream(resp, request, on_raw,
                                                                  progress))
            return await self._post(request.path, request.body, headers,
                                    lambda resp: _read_whole(resp, on_raw, progress))

        return await self._retrying(attempt, before_attempt)

    async def _retrying(self, attempt: Callable[[_Progress], Awaitable[Ending]],
                        before_attempt: Callable[[], Any] | None) -> Ending:
        tries = 0
        while True:
            if before_attempt is not None:
                await before_attempt()
            try:
                return await _guarded(attempt)
            except _Retryable as retry:
                if tries >= self._s.retries:
                    raise retry.error from None
                delay = self._s.retry_backoff_s * (2 ** tries) * (0.5 + random.random())
                log.info("upstream attempt %d failed (%s); retrying in %.2fs",
                         tries + 1, retry.error, delay)
                tries += 1
                await asyncio.sleep(delay)

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


class _Progress:
    """Whether anything reached the caller yet: after that, a failure is never retried."""

    sent = False


async def _guarded(attempt: Callable[[_Progress], Awaitable[Ending]]) -> Ending:
    """One attempt, its transport failures sorted into retryable (nothing sent) or final."""
    progress = _Progress()
    try:
        return await attempt(progress)
    except TimeoutError as err:
        if isinstance(err, aiohttp.ConnectionTimeoutError) and not progress.sent:
            raise _Retryable(UpstreamError("timed out connecting to the model")) from err
        raise UpstreamTimeout("the model did not answer in time") from err
    except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError,
            aiohttp.ClientPayloadError, aiohttp.ClientOSError,
            aiohttp.ClientConnectionResetError) as err:
        error = UpstreamError(f"the model server connection failed: {type(err).__name__}")
        if progress.sent:
            raise error from err
        raise _Retryable(error) from err
    except aiohttp.ClientError as err:
        raise UpstreamError(f"the model server failed: {type(err).__name__}") from err


def _note(chunk: dict[str, Any], finish: str, usage: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The finish reason and usage a chunk (or a whole answer) carries, if any."""
    usage = chunk.get("usage") or usage
    for choice in chunk.get("choices") or ():
        finish = choice.get("finish_reason") or finish
    return finish, usage


async def _read_chat(resp: aiohttp.ClientResponse, on_delta: Callable[[str], None],
                     progress: _Progress) -> Ending:
    finish, usage = "stop", cast(dict[str, Any], {})
    async for events in _events(resp):
        texts: list[str] = []
        for _, chunk in events:
            finish, usage = _note(chunk, finish, usage)
            for choice in chunk.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    texts.append(text)
        if texts:
            progress.sent = True
            on_delta("".join(texts))  # one delta per network read, not per token
    return Ending(finish, usage)


async def _read_stream(resp: aiohttp.ClientResponse, request: ForwardRequest,
                       on_raw: Callable[[bytes], None], progress: _Progress) -> Ending:
    """Pass the events on as they came (per network read); drop only the usage chunk that
    we asked for and the client did not."""
    finish, usage = "stop", cast(dict[str, Any], {})
    async for events in _events(resp, keep_done=True):
        out: list[bytes] = []
        for line, chunk in events:
            finish, usage = _note(chunk, finish, usage)
            if request.hide_usage and chunk.get("usage") and not chunk.get("choices"):
                continue
            out.append(line)
        if out:
            progress.sent = True
            on_raw(b"\n\n".join(out) + b"\n\n")
    return Ending(finish, usage)


async def _read_whole(resp: aiohttp.ClientResponse, on_raw: Callable[[bytes], None],
                      progress: _Progress) -> Ending:
    body = await resp.read()
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict):
        raise UpstreamError("the model server sent a malformed answer")
    finish, usage = _note(answer, "stop", {})
    progress.sent = True
    on_raw(body)
    return Ending(finish, usage)


async def _events(resp: aiohttp.ClientResponse, keep_done: bool = False
                  ) -> AsyncIterator[list[tuple[bytes, dict[str, Any]]]]:
    """Parse the SSE body per network read: each `data:` line that arrived together, with its
    chunk, up to [DONE] (itself given with an empty chunk when `keep_done`). The body is read
    to its end so the connection can be reused; a stream cut short before [DONE] is an
    error, and so is an error the model server puts in the stream."""
    done = False
    buffer = b""
    async for data in resp.content.iter_any():
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        if done:
            continue
        events: list[tuple[bytes, dict[str, Any]]] = []
        error: UpstreamError | None = None
        for raw in lines:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                done = True
                if keep_done:
                    events.append((line, {}))
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
            events.append((line, chunk))
        if events:
            yield events  # what arrived before a bad line still reaches the client
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
        return UpstreamRejected(message, resp.status, detail)
    return UpstreamError(message)


def _message(body: Any) -> str:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return str(inner.get("message", ""))
        return str(inner)
    return ""
