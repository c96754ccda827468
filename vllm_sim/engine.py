"""Simulated engine: scheduling, counters, tokens and the checks every endpoint shares."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
from collections import deque
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from .settings import SimSettings

_TOKEN_RE = re.compile(r"\s*\S+")
MAX_LOGPROBS = 20  # vLLM's default --max-logprobs


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
    in_flight: int = 0  # generation requests being answered, queued ones included
    max_in_flight: int = 0
    prefix_cache_queries: int = 0  # prompts looked up in the prefix cache
    prefix_cache_hits: int = 0  # of those, prompts whose prefix was cached

    def snapshot(self) -> dict[str, int]:
        """Return the counters as a plain dict."""
        return dataclasses.asdict(self)

    def reset(self) -> None:
        """Zero the counters; running/waiting/in_flight are live gauges and stay."""
        for f in dataclasses.fields(self):
            if f.name not in ("running", "waiting", "in_flight"):
                setattr(self, f.name, 0)
        self.max_running, self.max_in_flight = self.running, self.in_flight


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


def count_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Rough prompt size: ~4 characters per token plus chat-template overhead."""
    total = 3  # assistant priming
    for m in messages:
        total += 4 + math.ceil(len(text_of(m.get("content"))) / 4)
    return total


def check_model(body: Mapping[str, Any], settings: SimSettings) -> str:
    """Return the served model, or raise vLLM's 404 for another name."""
    model = body.get("model") or settings.model
    if model != settings.model:
        raise BadRequest(f"The model `{model}` does not exist.", 404, "NotFoundError")
    return str(model)


def stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
    """Return (stream, include_usage) after vLLM's checks."""
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be a boolean")
    opts = body.get("stream_options")
    if opts is not None and (not stream or not isinstance(opts, dict)):
        raise BadRequest("Stream options can only be defined when `stream=True`.")
    return stream, bool(opts and opts.get("include_usage"))


def count_of(body: Mapping[str, Any]) -> int:
    """Return `n`, the number of choices (default 1)."""
    n = body.get("n")
    if n is None:
        return 1
    if type(n) is not int or n < 1:
        raise BadRequest(f"n must be at least 1, got {n}.")
    return n


def seed_of(body: Mapping[str, Any]) -> int | None:
    """Return the sampling seed, if any."""
    seed = body.get("seed")
    if seed is not None and type(seed) is not int:
        raise BadRequest("seed must be an integer")
    return seed


def check_temperature(body: Mapping[str, Any]) -> None:
    """Reject a negative or non-numeric temperature."""
    t = body.get("temperature")
    if t is not None and (not isinstance(t, (int, float)) or isinstance(t, bool) or t < 0):
        raise BadRequest("temperature must be a non-negative number")


def check_top_logprobs(top: Any) -> int:
    """Return a top-logprobs count within vLLM's limit."""
    if type(top) is not int or top < 0:
        raise BadRequest("`top_logprobs` must be a positive value.")
    if top > MAX_LOGPROBS:
        raise BadRequest(f"Requested sample logprobs of {top}, which is greater than max "
                         f"allowed: {MAX_LOGPROBS}")  # fmt: skip
    return top


def room_for(settings: SimSettings, prompt: int, max_tokens: int | None) -> int:
    """Return the tokens left in the context window, raising vLLM's error if too few."""
    room = settings.max_model_len - prompt
    if room < 1 or (max_tokens is not None and max_tokens > room):
        raise BadRequest(
            f"This model's maximum context length is {settings.max_model_len} tokens. "
            f"However, you requested {prompt + (max_tokens or 0)} tokens ({prompt} in the "
            f"messages, {max_tokens or 0} in the completion). Please reduce the length "
            "of the messages or completion."
        )
    return room
