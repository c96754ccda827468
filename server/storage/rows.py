"""Row shapes and timestamps shared by the storage modules."""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, NamedTuple, NotRequired, TypedDict

import orjson


class UserRow(TypedDict):
    """A user as the API shows it (role, status, must_change_password and limits: from V5 on)."""

    id: int
    username: str
    created_at: str
    role: NotRequired[str]  # "admin" | "user"
    status: NotRequired[str]  # "active" | "disabled" | "pending"
    must_change_password: NotRequired[bool]
    limits: NotRequired[dict[str, int]]  # per-user cap overrides; {} = the config's defaults


class AdminUserRow(UserRow):
    """A user as an administrator sees it: with this month's usage and last activity."""

    month_tokens: int
    month_requests: int
    last_active_at: str | None


class AuditRow(TypedDict):
    """One admin action: who did what to whom, when, with a small detail (never a secret)."""

    id: int
    at: str
    actor_id: int | None
    actor: str
    action: str
    target_id: int | None
    target: str | None
    detail: dict[str, Any]


class ConversationRow(TypedDict):
    """A conversation as the API shows it."""

    id: int
    title: str
    created_at: str
    updated_at: str
    message_count: int
    model: str | None  # the model its turns use (None: the first configured)
    settings: dict[str, Any]  # its own system_prompt, temperature, max_tokens ({}: none)
    leaf_id: int | None  # the last message of the branch shown (None: no messages)


class ConversationUse(NamedTuple):
    """What a turn needs of its conversation besides history: its model and settings."""

    model: str | None
    settings: dict[str, Any]


class MessageRow(TypedDict):
    """A message as the API shows it (`usage`: the model's token counts, on replies)."""

    id: int
    role: str
    content: str
    status: str
    created_at: str
    usage: NotRequired[dict[str, Any]]
    model: NotRequired[str]  # on a reply: the model that wrote it
    error: NotRequired[dict[str, str]]  # on a failed reply: {"code", "message"}
    parent_id: NotRequired[int | None]  # the message it follows (None: the first)
    siblings: NotRequired[list[int]]  # it and its alternatives, oldest first (if several)
    summary: NotRequired[dict[str, str]]  # the path up to it, summarised: {content, created_at}


class MemoryRow(TypedDict):
    """A long-term memory as its owner sees it."""

    id: int
    content: str
    enabled: bool
    state: str  # "active" | "proposed" (waits for the user to accept it)
    created_at: str
    updated_at: str


class KeyRow(TypedDict):
    """An API key as its owner sees it (never the key itself, nor its hash)."""

    id: int
    name: str
    prefix: str
    created_at: str
    expires_at: int | None
    last_used_at: str | None
    rpm: int | None
    tpm: int | None


class UsageRow(TypedDict):
    """Tokens used on one UTC day (YYYY-MM-DD), by one key (0: not through a key)."""

    day: str
    key_id: int
    requests: int
    prompt_tokens: int
    completion_tokens: int


class SearchHit(TypedDict):
    """One matching message."""

    conversation_id: int
    message_id: int
    title: str
    snippet: str
    highlights: list[list[int]]
    created_at: str


# The columns of a UserRow, in user_row's order (prefixed by a table alias where needed).
USER_COLUMNS = ("id", "username", "created_at", "role", "status", "must_change_password",
                "limits")


def user_row(row: Any, at: int = 0) -> UserRow:
    """The UserRow in row[at:at + 7] (USER_COLUMNS' order)."""
    return {"id": row[at], "username": row[at + 1], "created_at": row[at + 2],
            "role": row[at + 3], "status": row[at + 4],
            "must_change_password": bool(row[at + 5]), "limits": orjson.loads(row[at + 6])}


# A conversation's earlier messages as (id, role, content), newest first; the oldest may be
# the summary of the path up to that message, with the role SUMMARY.
HistoryRows = list[tuple[int, str, str]]
SUMMARY = "summary"


@lru_cache(maxsize=4)
def _second(whole: int) -> str:
    """The formatted second, reused: now_iso runs for every row written."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


def now_iso() -> str:
    """UTC now as ISO 8601 with milliseconds; sorts as text."""
    return iso_at(time.time())


def merge_settings(old: str | None, changes: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """A settings object (JSON text, '' = none) with `changes` merged in, None removing a
    key: the object, and its text as stored ('' when empty)."""
    merged = {**(orjson.loads(old) if old else {}), **changes}
    kept = {key: value for key, value in merged.items() if value is not None}
    return kept, orjson.dumps(kept).decode() if kept else ""


def iso_at(at: float) -> str:
    """A Unix time as now_iso writes it."""
    ms = int(at * 1000)
    return f"{_second(ms // 1000)}.{ms % 1000:03d}Z"


# message_row's columns, as a turn's stored reply is read back.
TURN_COLUMNS = "id, role, content, status, created_at, usage, model, error, parent_id"


def message_row(row: Any) -> MessageRow:
    """(id, role, content, status, created_at[, usage[, model[, error[, parent_id]]]]) as a
    MessageRow; usage, model and error only if stored."""
    message: MessageRow = {"id": row[0], "role": row[1], "content": row[2], "status": row[3],
                           "created_at": row[4]}
    if len(row) > 5 and row[5]:
        message["usage"] = orjson.loads(row[5])
    if len(row) > 6 and row[6]:
        message["model"] = row[6]
    if len(row) > 7 and row[7]:
        message["error"] = orjson.loads(row[7])
    if len(row) > 8:
        message["parent_id"] = row[8]  # later columns, if any, are the caller's
    return message


def shown_message_row(row: Any) -> MessageRow:
    """message_row's nine columns, then the summary's content and time (NULL: none), as a
    conversation's page shows the message."""
    message = message_row(row)
    if row[9] is not None:  # the path up to it is summarised
        message["summary"] = {"content": row[9], "created_at": row[10]}
    return message


KEY_COLUMNS = "id, name, prefix, created_at, expires_at, last_used_at, rpm, tpm"


def key_row(row: Any) -> KeyRow:
    """An API key as the API shows it (never its hash), from KEY_COLUMNS."""
    return {"id": row[0], "name": row[1], "prefix": row[2], "created_at": row[3],
            "expires_at": row[4], "last_used_at": row[5], "rpm": row[6], "tpm": row[7]}


MEMORY_COLUMNS = "id, content, enabled, state, created_at, updated_at"


def memory_row(row: Any) -> MemoryRow:
    """A memory as the API shows it, from MEMORY_COLUMNS."""
    return {"id": row[0], "content": row[1], "enabled": bool(row[2]), "state": row[3],
            "created_at": row[4], "updated_at": row[5]}


def same_memory(text: str) -> str:
    """What two memories share when they say the same thing (case and spacing aside)."""
    return " ".join(text.split()).casefold()


AUDIT_COLUMNS = "id, at, actor_id, actor, action, target_id, target, detail"


def audit_row(row: Any) -> AuditRow:
    """An audit log row as the API shows it, from AUDIT_COLUMNS."""
    return {"id": row[0], "at": row[1], "actor_id": row[2], "actor": row[3], "action": row[4],
            "target_id": row[5], "target": row[6], "detail": orjson.loads(row[7])}
