"""A planned reply: its choices, and the step-by-step chunks and usage every endpoint shares."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .tools import ToolCall

Chunk = dict[str, Any]


@dataclass
class Choice:
    """One planned choice: text tokens (or tool-call argument fragments) and how it ends."""

    index: int
    tokens: list[str]
    finish_reason: str
    tool: ToolCall | None = None  # a tool call instead of text
    prefix: list[str] = field(default_factory=list)  # echoed prompt tokens (legacy completions)

    @property
    def steps(self) -> int:
        """Generated tokens; a tool call's name counts as one."""
        return len(self.tokens) + (self.tool is not None)

    def token(self, step: int) -> str:
        """The text generated at `step` ("" past the end)."""
        return self.tokens[step] if step < len(self.tokens) else ""


@dataclass
class Call:
    """One request being served: its planned choices and the envelope they share."""

    model: str
    stream: bool
    include_usage: bool
    choices: list[Choice]
    prompt_tokens: int
    id: str
    top_logprobs: int | None = None  # set when logprobs were asked for
    fault: str = "none"
    after: int = 0
    created: int = field(default_factory=lambda: int(time.time()))
    done: bool = False  # finished or ended on purpose: not an abort
    segments: list[str] = field(default_factory=list)  # the prompt as the prefix cache sees it
    prefix_hit: bool = False  # the prompt's prefix was in the replica's prefix cache

    chunk_object: ClassVar[str] = "chat.completion.chunk"

    def steps(self) -> int:
        """Generation steps: the longest choice sets the pace."""
        return max((c.steps for c in self.choices), default=0)

    def completion_tokens(self) -> int:
        """Tokens generated over all choices."""
        return sum(c.steps for c in self.choices)

    def usage(self) -> dict[str, int]:
        """Return the usage block for this call."""
        n = self.completion_tokens()
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": n,
                "total_tokens": self.prompt_tokens + n}  # fmt: skip

    def envelope(self, obj: str, choices: list[Any]) -> Chunk:
        """Build the fields every response object shares."""
        return {"id": self.id, "object": obj, "created": self.created,
                "model": self.model, "choices": choices}  # fmt: skip

    def usage_chunk(self) -> Chunk:
        """The last streamed chunk when stream_options.include_usage is set."""
        return {**self.envelope(self.chunk_object, []), "usage": self.usage()}

    def reply_segment(self) -> str | None:
        """The reply as one prefix-cache segment, or None when it cannot be cached."""
        return None

    def opening(self) -> list[Chunk]:
        """Chunks sent before the first token."""
        return []

    def step(self, step: int) -> tuple[list[Chunk], int]:
        """The chunks of one generation step and how many tokens they carry."""
        chunks, made = [], 0
        for c in self.choices:
            if step < c.steps:
                chunks.append(self.piece(c, step, step == c.steps - 1))
                made += 1
            elif step == 0:  # an empty choice still needs its finish chunk
                chunks.append(self.piece(c, 0, True))
        return chunks, made

    def piece(self, choice: Choice, step: int, last: bool) -> Chunk:
        """One streamed chunk for `choice` at `step`."""
        raise NotImplementedError

    def completion(self) -> Chunk:
        """The non-streaming response body."""
        raise NotImplementedError
