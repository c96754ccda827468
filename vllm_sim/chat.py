"""POST /v1/chat/completions: request checks and the chat.completion shapes."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from .calls import Call, Choice, Chunk
from .engine import (
    BadRequest,
    check_model,
    check_temperature,
    check_top_logprobs,
    count_of,
    count_prompt_tokens,
    room_for,
    seed_of,
    split_tokens,
    stream_flags,
    text_of,
)
from .replies import chat_logprob, forced_text, free_text
from .settings import SimSettings
from .tools import check_tools, choose_function, make_call

_ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})


@dataclass
class ChatCall(Call):
    """A chat completion being served."""

    chunk_object: ClassVar[str] = "chat.completion.chunk"

    def _logprobs(self, c: Choice, tokens: list[str], start: int) -> dict[str, Any] | None:
        if self.top_logprobs is None or not tokens:
            return None
        k = self.top_logprobs
        return {"content": [chat_logprob(t, f"{c.index}:{start + i}", k)
                            for i, t in enumerate(tokens)]}  # fmt: skip

    def _choice(self, c: Choice, delta: Chunk, lp: Any, finish: str | None) -> Chunk:
        return {"index": c.index, "delta": delta, "logprobs": lp, "finish_reason": finish}

    def reply_segment(self) -> str | None:
        """The first choice's text as the next turn will send it back."""
        first = self.choices[0] if self.choices else None
        if first is None or first.tool is not None:
            return None
        return segment("assistant", "".join(first.tokens))

    def opening(self) -> list[Chunk]:
        """The role chunk of every choice."""
        role = {"role": "assistant", "content": ""}
        return [self.envelope(self.chunk_object, [self._choice(c, role, None, None)])
                for c in self.choices]  # fmt: skip

    def piece(self, choice: Choice, step: int, last: bool) -> Chunk:
        """A content delta, or a tool-call header then its argument fragments."""
        finish = choice.finish_reason if last else None
        tool = choice.tool
        if tool is None:
            token = choice.token(step)
            delta: Chunk = {"content": token}
            lp = self._logprobs(choice, [token] if token else [], step)
        elif step == 0:
            fn = {"name": tool.name, "arguments": ""}
            delta = {"tool_calls": [{"index": 0, "id": tool.id, "type": "function",
                                     "function": fn}]}  # fmt: skip
            lp = None
        else:
            fragment = choice.token(step - 1)
            delta = {"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}
            lp = self._logprobs(choice, [fragment], step - 1)
        return self.envelope(self.chunk_object, [self._choice(choice, delta, lp, finish)])

    def completion(self) -> Chunk:
        """Build the non-streaming chat.completion object."""
        choices = []
        for c in self.choices:
            if c.tool is None:
                msg: Chunk = {"role": "assistant", "content": "".join(c.tokens)}
            else:  # truncated arguments stay truncated, as a real model's would
                call = {**c.tool.full()}
                call["function"] = {**call["function"], "arguments": "".join(c.tokens)}
                msg = {"role": "assistant", "content": None, "tool_calls": [call]}
            choices.append({"index": c.index, "message": msg,
                            "logprobs": self._logprobs(c, c.tokens, 0),
                            "finish_reason": c.finish_reason})  # fmt: skip
        return {**self.envelope("chat.completion", choices), "usage": self.usage()}


def _check_messages(messages: Any) -> list[dict[str, Any]]:
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
    return messages


def _top_logprobs(body: Mapping[str, Any]) -> int | None:
    """The top_logprobs count when logprobs is true, else None."""
    wanted = body.get("logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        raise BadRequest("logprobs must be a boolean")
    top = body.get("top_logprobs")
    k = 0 if top is None else check_top_logprobs(top)
    if k > 0 and not wanted:
        raise BadRequest("when using `top_logprobs`, `logprobs` must be set to true.")
    return k if wanted else None


def segments_of(messages: list[dict[str, Any]]) -> list[str]:
    """The prompt as prefix-cache segments: one per message, role and trimmed text."""
    return [segment(m.get("role"), text_of(m.get("content"))) for m in messages]


def segment(role: Any, text: str) -> str:
    """One message as the prefix cache keys it: its role and trimmed text."""
    return f"{role}\x00{text.strip()}"


def parse_call(
    body: Any, headers: Mapping[str, str], settings: SimSettings, request_id: str
) -> ChatCall:
    """Validate a chat request like vLLM does and plan the reply; unknown fields are ignored."""
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object")
    model = check_model(body, settings)
    messages = _check_messages(body.get("messages"))
    stream, include_usage = stream_flags(body)
    check_temperature(body)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
        raise BadRequest(f"max_tokens must be at least 1, got {max_tokens}.")
    n, seed, top = count_of(body), seed_of(body), _top_logprobs(body)
    functions, tool_choice = check_tools(body)
    prompt = count_prompt_tokens(messages)
    if functions:  # the chat template spells the tools out in the prompt
        prompt += math.ceil(len(orjson.dumps(functions)) / 4)
    room = room_for(settings, prompt, max_tokens)
    limit = min(max_tokens or room, room)
    forced = forced_text(messages, headers, settings)
    users = [m for m in messages if m.get("role") == "user"]
    last = text_of(users[-1].get("content")) if users else ""
    function = choose_function(functions, tool_choice, last, free=forced is None)
    choices = []
    for i in range(n):
        if function is not None:
            call = make_call(function, last)
            fragments, budget = split_tokens(call.arguments), limit - 1  # the name takes one
            finish = "length" if len(fragments) > budget else "tool_calls"
            choices.append(Choice(i, fragments[:budget], finish, tool=call))
            continue
        text = forced if forced is not None else free_text(messages, settings, seed, i)
        tokens = split_tokens(text)
        finish = "length" if len(tokens) > limit else "stop"
        choices.append(Choice(i, tokens[:limit], finish))
    return ChatCall(model=model, stream=stream, include_usage=include_usage, choices=choices,
                    prompt_tokens=prompt, id=f"chatcmpl-{request_id}",
                    top_logprobs=top, segments=segments_of(messages))  # fmt: skip
