"""Tool calling: checking tools and tool_choice, picking a function, making up its arguments."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .engine import BadRequest

_WEATHER_RE = re.compile(r"\bweather\b", re.IGNORECASE)
_PLACE_RE = re.compile(r"\b(?:in|at|for)\s+([A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*)")
_PLACE_KEYS = ("location", "city", "place", "where", "address", "region", "country")
Function = dict[str, Any]


@dataclass
class ToolCall:
    """One function call the simulated model makes."""

    name: str
    arguments: str  # JSON text, streamed in fragments
    id: str = field(default_factory=lambda: f"chatcmpl-tool-{uuid.uuid4().hex}")

    def full(self) -> dict[str, Any]:
        """The call as message.tool_calls lists it."""
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}  # fmt: skip


def _is_tool(tool: Any) -> bool:
    fn = tool.get("function") if isinstance(tool, dict) else None
    return (tool.get("type", "function") == "function" and isinstance(fn, dict)
            and isinstance(fn.get("name"), str) and bool(fn["name"]))  # fmt: skip


def check_tools(body: Mapping[str, Any]) -> tuple[list[Function], Any]:
    """Validate tools and tool_choice like vLLM; return the functions and the choice."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools is not None and (not isinstance(tools, list) or not all(map(_is_tool, tools))):
        raise BadRequest('tools must be a list of {"type": "function", "function": '
                         '{"name": ...}} objects')  # fmt: skip
    functions: list[Function] = [t["function"] for t in tools or []]
    if choice is None or choice == "none":
        return functions, choice
    if tools is None:
        raise BadRequest("When using `tool_choice`, `tools` must be set.")
    if choice in ("auto", "required"):
        return functions, choice
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        if any(f["name"] == choice["function"].get("name") for f in functions):
            return functions, choice
        raise BadRequest("The tool specified in `tool_choice` does not match any of the "
                         "specified `tools`")  # fmt: skip
    raise BadRequest(f"Invalid value for `tool_choice`: {choice!r}! Only named tools, "
                     '"none", "auto" or "required" are supported.')  # fmt: skip


def choose_function(
    functions: list[Function], choice: Any, prompt: str, free: bool
) -> Function | None:
    """The function to call, or None for a text reply."""
    # A named function or "required" always calls; "auto" (or no choice) calls when the
    # prompt mentions the weather and no test fixed the reply text (then free is False).
    if not functions or choice == "none":
        return None
    if isinstance(choice, dict):
        return next(f for f in functions if f["name"] == choice["function"]["name"])
    weather = _WEATHER_RE.search(prompt) is not None
    if choice != "required" and not (free and weather):
        return None
    if weather:
        return next((f for f in functions if "weather" in f["name"].lower()), functions[0])
    return functions[0]


def _value(name: str, schema: Any, prompt: str) -> Any:
    """A plausible value for one JSON-schema property."""
    if not isinstance(schema, dict):
        return "example"
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object":
        return _object(schema, prompt)
    if kind == "array":
        return [_value(name, schema.get("items"), prompt)] if schema.get("items") else []
    simple = {"integer": 1, "number": 21.5, "boolean": True, "null": None}
    if kind in simple:
        return simple[kind]
    if any(k in name.lower() for k in _PLACE_KEYS):
        match = _PLACE_RE.search(prompt)
        return match.group(1) if match else "San Francisco"
    if "unit" in name.lower():
        return "celsius"
    return " ".join(prompt.split()[:6]) or "example"


def _object(schema: Mapping[str, Any], prompt: str) -> dict[str, Any]:
    props = schema.get("properties")
    if not isinstance(props, dict):
        return {}
    return {str(k): _value(str(k), v, prompt) for k, v in props.items()}


def make_call(function: Function, prompt: str) -> ToolCall:
    """Call `function` with arguments made up from its parameter schema and the prompt."""
    params = function.get("parameters")
    args = _object(params, prompt) if isinstance(params, dict) else {}
    return ToolCall(function["name"], json.dumps(args, ensure_ascii=False))
