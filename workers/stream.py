"""Reading the model server's answers: SSE chat streams, passed-through streams, whole bodies."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import aiohttp
import orjson

from .errors import UpstreamError
from .job import Ending, ForwardRequest


class Progress:
    """One attempt's progress: whether anything reached the caller yet (after that, a failure
    is never retried) and when the first piece did."""

    __slots__ = ("first", "sent")

    def __init__(self) -> None:
        self.sent = False
        self.first: float | None = None

    def mark(self) -> None:
        """Something reached the caller."""
        if not self.sent:
            self.sent = True
            self.first = time.monotonic()


def _note(chunk: dict[str, Any], finish: str, usage: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The finish reason and usage a chunk (or a whole answer) carries, if any."""
    usage = chunk.get("usage") or usage
    for choice in chunk.get("choices") or ():
        finish = choice.get("finish_reason") or finish
    return finish, usage


async def read_chat(resp: aiohttp.ClientResponse, on_delta: Callable[[str], None],
                     progress: Progress) -> Ending:
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
            progress.mark()
            on_delta("".join(texts))  # one delta per network read, not per token
    return Ending(finish, usage)


async def read_stream(resp: aiohttp.ClientResponse, request: ForwardRequest,
                       on_raw: Callable[[bytes], None], progress: Progress) -> Ending:
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
            progress.mark()
            on_raw(b"\n\n".join(out) + b"\n\n")
    return Ending(finish, usage)


async def read_whole(resp: aiohttp.ClientResponse, on_raw: Callable[[bytes], None],
                      progress: Progress) -> Ending:
    body = await resp.read()
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict):
        raise UpstreamError("the model server sent a malformed answer")
    finish, usage = _note(answer, "stop", {})
    progress.mark()
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
                error = UpstreamError(f"the model failed: {message_of(chunk)}")
                break
            events.append((line, chunk))
        if events:
            yield events  # what arrived before a bad line still reaches the client
        if error is not None:
            raise error
    if not done:
        raise aiohttp.ServerDisconnectedError("stream ended before [DONE]")


def message_of(body: Any) -> str:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return str(inner.get("message", ""))
        return str(inner)
    return ""
