"""Reading and checking request bodies and query strings; every failure names the field."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from ..middleware.errors import ApiError, invalid

MAX_SYSTEM_PROMPT_CHARS = 8000  # a conversation's or an account's own system prompt
CONVERSATION_SETTINGS = frozenset({"system_prompt", "temperature", "max_tokens"})


async def read_json(request: web.Request, allowed: frozenset[str]) -> dict[str, Any]:
    """The body as a JSON object with only the allowed keys.

    Requiring `Content-Type: application/json` means no cross-site HTML form can post here
    (a form cannot send that type without a CORS preflight): login CSRF is closed too.
    """
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type",
                       "send the body as JSON with Content-Type: application/json")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as err:
        raise ApiError(413, "payload_too_large", "request body is too large") from err
    if not raw:
        raise invalid("request body must be a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise invalid(f"request body is not valid JSON: {err.msg}") from err
    if not isinstance(body, dict):
        raise invalid("request body must be a JSON object")
    extra = sorted(set(body) - allowed)
    if extra:
        raise invalid(f"unknown field '{extra[0]}'", extra[0])
    return body


def text(body: Mapping[str, Any], key: str, *, min_len: int = 0, max_len: int,
         required: bool = True, pattern: re.Pattern[str] | None = None,
         hint: str = "") -> str | None:
    """A string field within length bounds (and matching `pattern`)."""
    value = body.get(key)
    if value is None:
        if required:
            raise invalid(f"'{key}' is required", key)
        return None
    if not isinstance(value, str):
        raise invalid(f"'{key}' must be a string", key)
    if "\x00" in value:
        raise invalid(f"'{key}' must not contain NUL characters", key)
    if not min_len <= len(value) <= max_len:
        raise invalid(f"'{key}' must be {min_len} to {max_len} characters", key)
    if pattern is not None and not pattern.fullmatch(value):
        raise invalid(f"'{key}' {hint or 'has an invalid format'}", key)
    return value


def number(body: Mapping[str, Any], key: str, *, low: float, high: float,
           integer: bool = False) -> float | int | None:
    """An optional number field within [low, high]."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (integer and not isinstance(value, int)):
        raise invalid(f"'{key}' must be {'a whole number' if integer else 'a number'}", key)
    if not low <= value <= high:
        raise invalid(f"'{key}' must be between {_shown(low)} and {_shown(high)}", key)
    return value


def boolean(body: Mapping[str, Any], key: str, default: bool = False) -> bool:
    """An optional boolean field."""
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(f"'{key}' must be true or false", key)
    return value


def ident(value: Any, key: str, from_path: bool = False) -> int:
    """A positive integer id: a JSON integer, or digits when it comes from the path."""
    if isinstance(value, bool):
        raise invalid(f"'{key}' must be a positive integer id", key)
    if from_path and isinstance(value, str) and value.isascii() and value.isdigit() \
            and len(value) <= 18:
        value = int(value)
    if not isinstance(value, int) or not 0 < value < 2**63:
        raise invalid(f"'{key}' must be a positive integer id", key)
    return value


def query_int(request: web.Request, key: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high]."""
    raw = request.query.get(key)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9):
        raise invalid(f"'{key}' must be a whole number", key)
    value = int(raw)
    if not low <= value <= high:
        raise invalid(f"'{key}' must be between {low} and {high}", key)
    return value


def settings_changes(value: Any, known: frozenset[str]
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A `settings` object as (the changes so far: each key given `null`, to remove it; the
    keys given a value, for the caller to check): anything else than an object of `known`
    keys is 400. A system prompt given is checked here (both kinds of settings have one)."""
    if not isinstance(value, dict):
        raise invalid("'settings' must be an object", "settings")
    unknown = set(value) - known
    if unknown:
        raise invalid(f"unknown setting {sorted(unknown)[0]!r} (known: "
                      f"{', '.join(sorted(known))})", "settings")
    changes: dict[str, Any] = {key: None for key in value if value[key] is None}
    present = {key: v for key, v in value.items() if v is not None}
    if "system_prompt" in present:
        changes["system_prompt"] = text(present, "system_prompt",
                                        max_len=MAX_SYSTEM_PROMPT_CHARS)
    return changes, present


def conversation_settings(value: Any) -> dict[str, Any]:
    """A conversation's `settings` object, the one check for them all (PATCH
    /api/conversations/{id}, a new conversation's first POST /api/chat, POST /api/prompt):
    each known key once, `null` to remove it (or leave it out); nothing else."""
    changes, present = settings_changes(value, CONVERSATION_SETTINGS)
    if "temperature" in present:
        changes["temperature"] = number(present, "temperature", low=0, high=2)
    if "max_tokens" in present:
        changes["max_tokens"] = number(present, "max_tokens", low=1, high=32768, integer=True)
    return changes


def new_settings(value: Any) -> dict[str, Any]:
    """A new conversation's settings: checked as a change of them, the `null` ones left out
    (`null` or absent: none)."""
    if value is None:
        return {}
    return {key: v for key, v in conversation_settings(value).items() if v is not None}


def render_option(value: Any) -> bool:
    """`render`: absent/"text" for Markdown source only, "html" to add sanitised HTML."""
    if value is None or value == "text":
        return False
    if value == "html":
        return True
    raise invalid("'render' must be \"text\" or \"html\"", "render")


def _shown(bound: float) -> str:
    """A bound as people write it: 1000000, not 1e+06."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"
