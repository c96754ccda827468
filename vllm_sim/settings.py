"""Typed knobs for the vLLM simulator."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_MODEL = "vllm-simulator"
FAULT_MODES: tuple[str, ...] = (
    "none",
    "500",
    "503",
    "429",
    "reset",
    "hang",
    "hang_after_first",
    "malformed",
)
# Knobs POST /sim/config may change while the simulator runs, with their types.
RUNTIME_KNOBS: dict[str, type] = {
    "ttft_ms": float,
    "tpot_ms": float,
    "reply_tokens": int,
    "capacity": int,
    "echo": bool,
    "demo": bool,
    "fault_after_tokens": int,
    "slowdown": float,
    "prefix_hit_ttft_ms": float,
}
NULLABLE_KNOBS = frozenset({"prefix_hit_ttft_ms"})  # knobs POST /sim/config may set to null


@dataclass
class SimSettings:
    """Simulator configuration; the running app reads these values live."""

    model: str = DEFAULT_MODEL
    ttft_ms: float = 20.0  # time to first token
    tpot_ms: float = 5.0  # time per output token after the first
    reply_tokens: int = 24  # length of the synthetic reply
    capacity: int = 256  # max running sequences (vLLM's max_num_seqs)
    max_model_len: int = 8192  # context window reported and enforced
    echo: bool = False  # reply with the last user message verbatim
    demo: bool = False  # canned Markdown answers picked by the prompt (reply_tokens unused)
    allow_test_headers: bool = False  # honour X-Sim-Reply / X-Sim-Fault
    api_key: str | None = None  # require "Authorization: Bearer <key>" on /v1
    fault: str = "none"  # global fault mode
    fault_rate: float = 1.0  # share of requests hit by the global fault
    fault_after_tokens: int = 2  # tokens sent before reset/malformed strike
    seed: int | None = None  # seeds the fault-rate dice
    history_size: int = 50  # request bodies kept for GET /sim/requests
    slowdown: float = 1.0  # multiplies ttft_ms and tpot_ms: a slow replica
    prefix_cache_size: int = 1024  # prompt-prefix hashes remembered (0: no prefix cache)
    prefix_hit_ttft_ms: float | None = None  # time to first token on a prefix hit (None: ttft_ms)

    def validate(self) -> None:
        """Raise ValueError if any knob is out of range."""
        if not self.model:
            raise ValueError("model must be a non-empty string")
        if self.ttft_ms < 0 or self.tpot_ms < 0:
            raise ValueError("ttft_ms and tpot_ms must be >= 0")
        if self.reply_tokens < 0 or self.fault_after_tokens < 0:
            raise ValueError("reply_tokens and fault_after_tokens must be >= 0")
        if self.capacity < 1 or self.max_model_len < 1 or self.history_size < 1:
            raise ValueError("capacity, max_model_len and history_size must be >= 1")
        if self.fault not in FAULT_MODES:
            raise ValueError(f"fault must be one of {', '.join(FAULT_MODES)}")
        if self.slowdown <= 0 or self.prefix_cache_size < 0:
            raise ValueError("slowdown must be > 0 and prefix_cache_size >= 0")
        if self.prefix_hit_ttft_ms is not None and self.prefix_hit_ttft_ms < 0:
            raise ValueError("prefix_hit_ttft_ms must be >= 0 or null")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError("fault_rate must be between 0 and 1")

    def apply(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Validate runtime changes, apply them all or none, and return them."""
        clean: dict[str, Any] = {}
        for key, value in changes.items():
            kind = RUNTIME_KNOBS.get(key)
            if kind is None:
                raise ValueError(f"unknown or read-only knob: {key}")
            if value is None and key in NULLABLE_KNOBS:
                clean[key] = None
                continue
            # bool is an int subclass; keep true/false out of numeric knobs.
            if kind is bool:
                ok = isinstance(value, bool)
            elif kind is int:
                ok = isinstance(value, int) and not isinstance(value, bool)
            else:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok:
                raise ValueError(f"{key} must be of type {kind.__name__}")
            clean[key] = kind(value)
        dataclasses.replace(self, **clean).validate()
        for key, value in clean.items():
            setattr(self, key, value)
        return clean

    def ttft_for(self, prefix_hit: bool) -> float:
        """Time to first token in ms, shorter on a prefix-cache hit, scaled by slowdown."""
        hit_ms = self.prefix_hit_ttft_ms
        base = hit_ms if prefix_hit and hit_ms is not None else self.ttft_ms
        return base * self.slowdown

    def tpot(self) -> float:
        """Time per output token in ms, scaled by slowdown."""
        return self.tpot_ms * self.slowdown

    def public(self) -> dict[str, Any]:
        """Return the settings as JSON-ready data with the api key masked."""
        data = dataclasses.asdict(self)
        data["api_key"] = "***" if self.api_key else None
        return data
