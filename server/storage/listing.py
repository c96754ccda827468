"""Conversation rows and their page cursors, shaped the same by every backend."""

from __future__ import annotations

import re
from typing import Any

import orjson

from .errors import InvalidCursor
from .rows import ConversationRow

COLUMNS = "id, title, created_at, updated_at, message_count, model, settings, leaf_id"


def conversation_row(row: Any) -> ConversationRow:
    """A row of COLUMNS as the API shows a conversation."""
    return {"id": row[0], "title": row[1], "created_at": row[2], "updated_at": row[3],
            "message_count": row[4], "model": row[5],
            "settings": orjson.loads(row[6]) if row[6] else {}, "leaf_id": row[7]}


# A cursor is the last row's sort key as text, "<updated_at>_<id>", e.g.
# "2026-11-25T03:35:00.583Z_42": any string of this form is a valid place to start from (the
# OpenAPI document gives the same pattern), so no well-formed cursor is ever refused.
CURSOR = re.compile(r"([0-9][0-9T:.Z-]{0,39})_([1-9][0-9]{0,17})")


def encode_cursor(updated_at: str, conversation_id: int) -> str:
    """The cursor after this row."""
    return f"{updated_at}_{conversation_id}"


def decode_cursor(cursor: str) -> tuple[str, int]:
    """(updated_at, id) of a cursor; InvalidCursor if it is not one."""
    found = CURSOR.fullmatch(cursor)
    if found is None:
        raise InvalidCursor("cursor is not valid")
    return found[1], int(found[2])
