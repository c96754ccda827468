"""POST /v1/completions (legacy text completions): request checks and text_completion shapes."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .calls import Call, Choice, Chunk
from .engine import (
    MAX_LOGPROBS,
    BadRequest,
    check_model,
    check_temperature,
    count_of,
    room_for,
    seed_of,
    split_tokens,
    stream_flags,
)
from .replies import completion_logprobs, forced_text, free_text
from .settings import SimSettings


@dataclass
class CompletionCall(Call):
    """A legacy text completion being served."""

    chunk_object: ClassVar[str] = "text_completion"

    def _logprobs(self, c: Choice, first: int, count: int) -> dict[str, Any] | None:
        """Logprobs of generated tokens [first, first+count), echoed prompt first if first is 0."""
        if self.top_logprobs is None:
            return None
        items: list[tuple[str, str | None]] = []
        if first == 0:
            items = [(t, f"{c.index}:p{i}" if i else None) for i, t in enumerate(c.prefix)]
        items += [(c.tokens[i], f"{c.index}:{i}") for i in range(first, first + count)]
        offset = 0 if first == 0 else sum(map(len, c.prefix)) + sum(map(len, c.tokens[:first]))
        return completion_logprobs(items, offset, self.top_logprobs)

    def _choice(self, c: Choice, text: str, lp: Any, finish: str | None) -> Chunk:
        return {"index": c.index, "text": text, "logprobs": lp, "finish_reason": finish,
                "stop_reason": None}  # fmt: skip

    def piece(self, choice: Choice, step: int, last: bool) -> Chunk:
        """A text delta; the first one carries the echoed prompt."""
        token = choice.token(step)
        text = ("".join(choice.prefix) if step == 0 else "") + token
        lp = self._logprobs(choice, step, 1 if token else 0)
        finish = choice.finish_reason if last else None
        return self.envelope(self.chunk_object, [self._choice(choice, text, lp, finish)])

    def completion(self) -> Chunk:
        """Build the non-streaming text_completion object."""
        choices = [self._choice(c, "".join(c.prefix + c.tokens),
                                self._logprobs(c, 0, len(c.tokens)), c.finish_reason)
                   for c in self.choices]  # fmt: skip
        return {**self.envelope("text_completion", choices), "usage": self.usage()}


def _prompts(prompt: Any) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise BadRequest("prompt must be a string or a non-empty list of strings")
    return prompts


def _logprobs_of(body: Mapping[str, Any]) -> int | None:
    lp = body.get("logprobs")
    if lp is None:
        return None
    if type(lp) is not int or lp < 0:
        raise BadRequest("logprobs must be a non-negative integer")
    if lp > MAX_LOGPROBS:
        raise BadRequest(f"Requested sample logprobs of {lp}, which is greater than max "
                         f"allowed: {MAX_LOGPROBS}")  # fmt: skip
    return lp


def prompt_tokens(prompt: str) -> int:
    """Rough prompt size: a BOS token plus ~4 characters per token."""
    return 1 + math.ceil(len(prompt) / 4)


def parse_completion(
    body: Any, headers: Mapping[str, str], settings: SimSettings, request_id: str
) -> CompletionCall:
    """Validate a legacy completions request like vLLM does and plan the reply."""
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object")
    model = check_model(body, settings)
    prompts = _prompts(body.get("prompt"))
    stream, include_usage = stream_flags(body)
    check_temperature(body)
    echo = body.get("echo", False)
    if not isinstance(echo, bool):
        raise BadRequest("echo must be a boolean")
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (type(max_tokens) is not int or max_tokens < (0 if echo else 1)):
        raise BadRequest(f"max_tokens must be at least 1, got {max_tokens}.")
    n, seed, top = count_of(body), seed_of(body), _logprobs_of(body)
    choices: list[Choice] = []
    total_prompt = 0
    for p, prompt in enumerate(prompts):
        size = prompt_tokens(prompt)
        total_prompt += size  # counted once per prompt, whatever n is
        room = room_for(settings, size, max_tokens)
        limit = min(room if max_tokens is None else max_tokens, room)
        messages = [{"role": "user", "content": prompt}]
        forced = forced_text(messages, headers, settings)
        prefix = split_tokens(prompt) if echo else []
        # A made-up continuation starts a new word, as a model's would.
        space = " " if prompt and not prompt[-1].isspace() else ""
        for i in range(n):
            text = forced if forced is not None else space + free_text(messages, settings, seed, i)
            tokens = split_tokens(text)
            finish = "length" if len(tokens) > limit else "stop"
            choices.append(Choice(p * n + i, tokens[:limit], finish, prefix=prefix))
    return CompletionCall(model=model, stream=stream, include_usage=include_usage,
                          choices=choices, prompt_tokens=total_prompt, id=f"cmpl-{request_id}",
                          top_logprobs=top,
                          segments=prompts[0].splitlines(keepends=True) if len(prompts) == 1
                          else [])  # fmt: skip
