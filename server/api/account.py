"""HTTP handlers for /api/account (the account's own settings) and the prompt previews."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import keys
from ..middleware.auth import principal_of
from ..middleware.errors import invalid
from ..services.account_settings import DEFAULTS, THEMES
from .responses import json_response
from .validation import ident, new_settings, read_json, settings_changes, text


async def get_account(request: web.Request) -> web.Response:
    """The user's name and settings (defaults filled in)."""
    user = principal_of(request).user
    settings = await request.app[keys.ACCOUNT_SETTINGS].get(user["id"])
    return json_response({"username": user["username"], "settings": settings})


async def update_account(request: web.Request) -> web.Response:
    """Change some settings: each key once, null to go back to the default."""
    body = await read_json(request, frozenset({"settings"}))
    changes = _settings(body.get("settings"))
    user = principal_of(request).user
    settings = await request.app[keys.ACCOUNT_SETTINGS].update(user["id"], changes,
                                                               user.get("limits"))
    return json_response({"username": user["username"], "settings": settings})


def _settings(value: object) -> dict[str, Any]:
    """The settings to change; nothing unknown, each value checked."""
    changes, present = settings_changes(value, frozenset(DEFAULTS))
    if "theme" in present:
        if present["theme"] not in THEMES:
            raise invalid(f"'theme' must be one of {', '.join(THEMES)}", "theme")
        changes["theme"] = present["theme"]
    return changes


def _model(request: web.Request) -> str | None:
    """`?model=`: the model the next turn would pick (absent or empty: the usual one)."""
    model = request.query.get("model") or None
    if model is not None and len(model) > 200:
        raise invalid("'model' must be at most 200 characters", "model")
    return model


async def conversation_prompt(request: web.Request) -> web.Response:
    """What the next turn of this conversation would send, without its new message."""
    conversation_id = ident(request.match_info["id"], "id", from_path=True)
    preview = await request.app[keys.PROMPTS].preview(
        principal_of(request).user["id"], conversation_id, _model(request))
    return json_response(preview)


async def new_chat_prompt(request: web.Request) -> web.Response:
    """What the first turn of a new chat would send, without its message."""
    preview = await request.app[keys.PROMPTS].preview(principal_of(request).user["id"], None,
                                                      _model(request))
    return json_response(preview)


async def new_chat_prompt_with(request: web.Request) -> web.Response:
    """POST /api/prompt: what the first turn of a new chat made with these `settings` (as
    POST /api/chat would take them) would send, without its message."""
    body = await read_json(request, frozenset({"settings", "model"}))
    settings = new_settings(body.get("settings"))
    model = text(body, "model", min_len=1, max_len=200, required=False)
    preview = await request.app[keys.PROMPTS].preview(principal_of(request).user["id"], None,
                                                      model, settings)
    return json_response(preview)
