"""SQL for messages: appending, and reading a conversation's recent history."""

from __future__ import annotations

import sqlite3
from typing import Any, cast

import orjson

from ..base import NO_QUOTA, Quota
from ..errors import NotFound
from ..rows import ConversationUse, HistoryRows, MessageRow, now_iso
from .db import Database
from .quotas import check


def _history(conn: sqlite3.Connection, conversation_id: int, before_id: int,
             limit: int) -> HistoryRows:
    """Up to `limit` newest (id, role, content) with text before `before_id`, newest first."""
    if limit <= 0:
        return []
    return [(r[0], r[1], r[2]) for r in conn.execute(
        "SELECT id, role, content FROM messages WHERE conversation_id = ? AND id < ? "
        "AND content != '' ORDER BY id DESC LIMIT ?", (conversation_id, before_id, limit))]

class SqliteMessages:
    """Messages in SQLite."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_user_message(self, user_id: int, conversation_id: int | None,
                               content: str, title: str, history: int = 0,
                               quota: Quota = NO_QUOTA, model: str | None = None
                               ) -> tuple[int, MessageRow, HistoryRows, ConversationUse]:
        """Store a user's message (creating the conversation when none is given) and return up to
        `history` earlier messages, newest first, all in one transaction: no separate read.
        The user's caps are checked in the same transaction: over one, nothing is stored.
        `model` (if given) becomes the conversation's; its model and settings are returned."""
        now = now_iso()

        def op(conn: sqlite3.Connection) -> tuple[int, MessageRow, HistoryRows, ConversationUse]:
            conv = conversation_id
            new = int(conv is None)
            check(conn, user_id, quota, conversations=new,
                  chars=len(content) + (len(title) if new else 0))
            if conv is None:
                conv = cast(int, conn.execute(
                    "INSERT INTO conversations (user_id, title, created_at, updated_at, model) "
                    "VALUES (?, ?, ?, ?, ?)", (user_id, title, now, now, model)).lastrowid)
                cur = conn.execute(
                    "INSERT INTO messages (conversation_id, role, content, created_at, owner) "
                    "VALUES (?, 'user', ?, ?, ?)", (conv, content, now, user_id))
            else:
                # One read checks the owner and gives the model and settings the turn uses.
                found = conn.execute("SELECT model, settings FROM conversations "
                                     "WHERE id = ? AND user_id = ?", (conv, user_id)).fetchone()
                if found is None:
                    raise NotFound("conversation not found")
                use = _use(conn, conv, model, found)
                cur = conn.execute(
                    "INSERT INTO messages (conversation_id, role, content, created_at, owner) "
                    "VALUES (?, 'user', ?, ?, ?)", (conv, content, now, user_id))
            ident = cast(int, cur.lastrowid)
            rows = _history(conn, conv, ident, history) if conversation_id is not None else []
            return conv, {"id": ident, "role": "user", "content": content, "status": "complete",
                          "created_at": now}, rows, ConversationUse(model, {}) if new else use

        return await self._db.write(op)

    async def add(self, conversation_id: int, role: str, content: str,
                  status: str = "complete", usage: str | None = None,
                  model: str | None = None, error: str | None = None) -> MessageRow:
        """Append a message (a reply: with the model that wrote it) to a conversation the
        caller has already checked."""
        now = now_iso()

        def op(conn: sqlite3.Connection) -> MessageRow:
            try:
                cur = conn.execute(
                    "INSERT INTO messages "
                    "(conversation_id, role, content, status, created_at, usage, model, "
                    "error, owner) SELECT ?, ?, ?, ?, ?, ?, ?, ?, user_id FROM conversations "
                    "WHERE id = ?",
                    (conversation_id, role, content, status, now, usage, model, error,
                     conversation_id))
                if cur.rowcount == 0:
                    raise NotFound("conversation not found")
            except sqlite3.IntegrityError as err:  # the conversation was deleted meanwhile
                raise NotFound("conversation not found") from err
            row: MessageRow = {"id": cast(int, cur.lastrowid), "role": role, "content": content,
                               "status": status, "created_at": now}
            if model:
                row["model"] = model
            if error:
                row["error"] = orjson.loads(error)
            return row

        return await self._db.write(op)

    async def rewind(self, user_id: int, conversation_id: int,
                     edit: tuple[int, str] | None = None, history: int = 0,
                     quota: Quota = NO_QUOTA, model: str | None = None
                     ) -> tuple[MessageRow, HistoryRows, ConversationUse]:
        """Drop everything after the conversation's last user message (editing it if asked);
        return that message, up to `history` messages before it, newest first, and the
        conversation's model (set to `model` if given)."""

        def op(conn: sqlite3.Connection) -> tuple[MessageRow, HistoryRows, ConversationUse]:
            row = conn.execute(
                "SELECT m.id, m.role, m.content, m.status, m.created_at, c.model, c.settings "
                "FROM messages m JOIN conversations c ON c.id = m.conversation_id "
                "AND c.user_id = ? "
                "WHERE m.conversation_id = ? AND m.role = 'user' ORDER BY m.id DESC LIMIT 1",
                (user_id, conversation_id)).fetchone()
            if row is None or (edit is not None and edit[0] != row[0]):
                raise NotFound("no such user message at the end of this conversation")
            conn.execute("DELETE FROM messages WHERE conversation_id = ? AND id > ?",
                         (conversation_id, row[0]))
            content = row[2]
            if edit is not None:
                content = edit[1]
                # After the replies went: an edit is refused only if it passes the cap anyway.
                check(conn, user_id, quota, chars=len(content) - len(row[2]))
                conn.execute("UPDATE messages SET content = ? WHERE id = ?", (content, row[0]))
            return {"id": row[0], "role": "user", "content": content, "status": row[3],
                    "created_at": row[4]}, _history(conn, conversation_id, row[0], history), \
                _use(conn, conversation_id, model, row[5:7])

        return await self._db.write(op)


def _use(conn: sqlite3.Connection, conversation_id: int, model: str | None,
         found: Any) -> ConversationUse:
    """The conversation's model and settings, from its `found` (model, settings) row; a
    `model` given becomes its model."""
    if model is not None and model != found[0]:
        conn.execute("UPDATE conversations SET model = ? WHERE id = ?", (model, conversation_id))
    return ConversationUse(model if model is not None else found[0],
                           orjson.loads(found[1]) if found[1] else {})
