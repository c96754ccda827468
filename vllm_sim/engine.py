"""Simulated engine: request parsing, reply synthesis, scheduling, counters."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
import random
import re
import time
import uuid
from collections import deque
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson

from .settings import SimSettings

_TOKEN_RE = re.compile(r"\s*\S+")
_PAD_WORDS = (
    "simulated", "tokens", "stream", "from", "a", "fake", "model", "with",
    "no", "gpu", "the", "gateway", "sees", "steady", "words", "and", "timing",
)  # fmt: skip
_ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})


@dataclass
class SimStats:
    """Live counters exposed at GET /sim/stats."""

    requests_total: int = 0
    running: int = 0
    max_running: int = 0
    waiting: int = 0
    completed: int = 0
    aborted: int = 0
    faults_injected: int = 0
    tokens_generated: int = 0
    connections_opened: int = 0

    def snapshot(self) -> dict[str, int]:
        """Return the counters as a plain dict."""
        return dataclasses.asdict(self)

    def reset(self) -> None:
        """Zero the counters; running/waiting are live gauges and stay."""
        for f in dataclasses.fields(self):
            if f.name not in ("running", "waiting"):
                setattr(self, f.name, 0)
        self.max_running = self.running


class Scheduler:
    """FIFO gate capping running sequences, like vLLM's max_num_seqs."""

    def __init__(self, settings: SimSettings, stats: SimStats) -> None:
        """Bind to the live settings and counters."""
        self._settings = settings
        self._stats = stats
        self._waiters: deque[asyncio.Future[None]] = deque()

    def _take(self) -> None:
        self._stats.running += 1
        self._stats.max_running = max(self._stats.max_running, self._stats.running)

    async def acquire(self) -> None:
        """Wait for a free slot, counting the wait as `waiting`."""
        if not self._waiters and self._stats.running < self._settings.capacity:
            self._take()
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._stats.waiting += 1
        try:
            await fut
        except asyncio.CancelledError:
            if fut.cancelled():  # still queued: leave the queue
                with suppress(ValueError):
                    self._waiters.remove(fut)
                self._stats.waiting -= 1
            else:  # granted a slot just as we were cancelled: hand it back
                self.release()
            raise

    def release(self) -> None:
        """Free a slot and admit waiters."""
        self._stats.running -= 1
        self.wake()

    def wake(self) -> None:
        """Admit queued requests while there is room (also after capacity grows)."""
        while self._waiters and self._stats.running < self._settings.capacity:
            fut = self._waiters.popleft()
            if fut.done():  # cancelled; its owner fixes the counters
                continue
            self._stats.waiting -= 1
            self._take()
            fut.set_result(None)


@dataclass
class Call:
    """One chat completion request being served."""

    model: str
    stream: bool
    include_usage: bool
    tokens: list[str]
    finish_reason: str
    prompt_tokens: int
    fault: str = "none"
    after: int = 0
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))
    done: bool = False  # finished or ended on purpose: not an abort

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        """Build one chat.completion.chunk object."""
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return self.envelope("chat.completion.chunk", [choice])

    def usage(self) -> dict[str, int]:
        """Return the usage block for this call."""
        n = len(self.tokens)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": n,
                "total_tokens": self.prompt_tokens + n}  # fmt: skip

    def envelope(self, obj: str, choices: list[Any]) -> dict[str, Any]:
        """Build the fields every response object shares."""
        return {"id": self.id, "object": obj, "created": self.created,
                "model": self.model, "choices": choices}  # fmt: skip

    def completion(self) -> dict[str, Any]:
        """Build the non-streaming chat.completion object."""
        msg = {"role": "assistant", "content": "".join(self.tokens)}
        choice = {"index": 0, "message": msg, "logprobs": None,
                  "finish_reason": self.finish_reason}  # fmt: skip
        return {**self.envelope("chat.completion", [choice]), "usage": self.usage()}


class BadRequest(Exception):
    """A request vLLM would reject; carries the HTTP status and error type."""

    def __init__(self, message: str, status: int = 400, kind: str = "BadRequestError"):
        """Keep the status and vLLM error type."""
        super().__init__(message)
        self.status, self.kind = status, kind


def split_tokens(text: str) -> list[str]:
    """Split text into word tokens with leading whitespace; joining gives text back."""
    tokens = _TOKEN_RE.findall(text)
    rest = text[sum(map(len, tokens)) :]  # trailing whitespace
    if rest:
        tokens = [*tokens[:-1], tokens[-1] + rest] if tokens else [rest]
    return tokens


def text_of(content: Any) -> str:
    """Flatten OpenAI message content (string or parts) to text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = (p.get("text") for p in content if isinstance(p, dict))
        return "".join(t for t in parts if isinstance(t, str))
    return ""


def synth_reply(messages: list[dict[str, Any]], n_tokens: int) -> str:
    """Deterministic reply derived from the conversation."""
    users = [m for m in messages if m.get("role") == "user"]
    last = text_of((users or messages)[-1].get("content"))
    words = ["Simulated", "reply", str(max(len(users), 1)), "to:"]
    words += last.split()[:8] or ["(empty)"]
    if len(users) > 1:  # show that the history arrived: quote the conversation's first message
        first = text_of(users[0].get("content")).split()[:8]
        words += ["—", "you", "first", "said:", *first, "—"]
    seed = hashlib.sha256(orjson.dumps(messages, option=orjson.OPT_SORT_KEYS)).digest()
    rng = random.Random(seed)
    while len(words) < n_tokens:
        words.append(rng.choice(_PAD_WORDS))
    return " ".join(words[:n_tokens])


def count_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Rough prompt size: ~4 characters per token plus chat-template overhead."""
    total = 3  # assistant priming
    for m in messages:
        total += 4 + math.ceil(len(text_of(m.get("content"))) / 4)
    return total


def parse_call(body: Any, headers: Mapping[str, str], settings: SimSettings) -> Call:
    """Validate a chat request like vLLM does and plan the reply."""
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object")
    model = body.get("model") or settings.model
    if model != settings.model:
        raise BadRequest(f"The model `{model}` does not exist.", 404, "NotFoundError")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a string role")
        if m["role"] not in _ROLES:
            raise BadRequest(f"messages[{i}].role {m['role']!r} is not supported")
        content = m.get("content")
        if content is None and m["role"] == "assistant":
            continue  # assistant turns that only carried tool calls
        if not isinstance(content, (str, list)):
            raise BadRequest(f"messages[{i}].content must be a string or a list of parts")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be a boolean")
    opts = body.get("stream_options")
    if opts is not None and (not stream or not isinstance(opts, dict)):
        raise BadRequest("Stream options can only be defined when `stream=True`.")
    temperature = body.get("temperature")
    if temperature is not None and (not isinstance(temperature, (int, float)) or temperature < 0):
        raise BadRequest("temperature must be a non-negative number")
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
        raise BadRequest(f"max_tokens must be at least 1, got {max_tokens}.")
    prompt = count_prompt_tokens(messages)
    room = settings.max_model_len - prompt
    if room < 1 or (max_tokens is not None and max_tokens > room):
        raise BadRequest(
            f"This model's maximum context length is {settings.max_model_len} tokens. "
            f"However, you requested {prompt + (max_tokens or 0)} tokens ({prompt} in the "
            f"messages, {max_tokens or 0} in the completion). Please reduce the length "
            "of the messages or completion."
        )
    header = headers.get("X-Sim-Reply") if settings.allow_test_headers else None
    if header is not None:
        text = unquote(header)
    elif settings.echo:
        users = [m for m in messages if m.get("role") == "user"]
        text = text_of(users[-1].get("content")) if users else ""
    else:
        text = synth_reply(messages, settings.reply_tokens)
    tokens = split_tokens(text)
    limit = min(max_tokens or room, room)
    finish = "length" if len(tokens) > limit else "stop"
    return Call(model=model, stream=stream, include_usage=bool(opts and opts.get("include_usage")),
                tokens=tokens[:limit], finish_reason=finish, prompt_tokens=prompt)  # fmt: skip
