"""SQL for messages: a user's turn (new, edited or asked again) with the history before it, and
replies."""

from __future__ import annotations

import sqlite3
from typing import Any, cast

import orjson

from ..base import NO_QUOTA, Quota, TurnMark
from ..errors import NotFound, TurnStored
from ..refusals import free
from ..rows import (
    TURN_COLUMNS,
    ConversationUse,
    HistoryRows,
    MessageRow,
    merge_settings,
    message_row,
    now_iso,
)
from .branches import owned_message, path_rows
from .db import Database
from .quotas import check


class SqliteMessages:
    """Messages in SQLite."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_user_message(self, user_id: int, conversation_id: int | None,
                               content: str, title: str, history: int = 0,
                               quota: Quota = NO_QUOTA, model: str | None = None,
                               turn: TurnMark | None = None,
                               settings: dict[str, Any] | None = None
                               ) -> tuple[int, MessageRow, HistoryRows, ConversationUse]:
        """Store a user's message after the conversation's active leaf (creating the conversation
        when none is given, with its own `settings`) and return up to `history` messages on the
        path before it, newest first, all in one transaction: no separate read.
        The user's caps are checked in the same transaction: over one, nothing is stored.
        `model` (if given) becomes the conversation's; its model and settings are returned.
        `turn` marks the conversation (ConversationBusy while another turn's mark holds)."""
        now = now_iso()
        turn_id = turn.id if turn is not None else None
        own, own_text = merge_settings(
            "", (settings or {}) if conversation_id is None else {})

        def op(conn: sqlite3.Connection) -> tuple[int, MessageRow, HistoryRows, ConversationUse]:
            conv = conversation_id
            new = int(conv is None)
            check(conn, user_id, quota, conversations=new,
                  chars=len(content) + (len(title) + len(own_text) if new else 0))
            if conv is None:
                conv = cast(int, conn.execute(
                    "INSERT INTO conversations (user_id, title, created_at, updated_at, model) "
                    "VALUES (?, ?, ?, ?, ?)", (user_id, title, now, now, model)).lastrowid)
                if own_text:  # set by an update: its trigger counts them in the stored text
                    conn.execute("UPDATE conversations SET settings = ? WHERE id = ?",
                                 (own_text, conv))
                parent = None
            else:
                # One read checks the owner and gives the model, settings and leaf the turn uses.
                found = conn.execute("SELECT model, settings, leaf_id, running_turn, "
                                     "running_since FROM conversations "
                                     "WHERE id = ? AND user_id = ?", (conv, user_id)).fetchone()
                if found is None:
                    raise NotFound("conversation not found")
                free(found[3], found[4], turn)
                use = _use(conn, conv, model, found)
                parent = found[2]
            ident = _insert_user(conn, conv, parent, content, now, user_id, turn_id)
            rows = path_rows(conn, parent, history)
            return conv, _user_row(ident, content, now, parent), rows, \
                ConversationUse(model, own) if new else use

        return await self._db.write(op)

    async def add(self, conversation_id: int, role: str, content: str,
                  status: str = "complete", usage: str | None = None,
                  model: str | None = None, error: str | None = None,
                  parent_id: int | None = None, turn: str | None = None) -> MessageRow:
        """Append a message (a reply: with the model that wrote it, under the message it
        answers) to a conversation the caller has already checked. NotFound if the
        conversation, or that message, was deleted meanwhile; TurnStored if `turn`'s reply
        is stored already."""
        now = now_iso()

        def op(conn: sqlite3.Connection) -> MessageRow:
            try:
                cur = conn.execute(
                    "INSERT INTO messages "
                    "(conversation_id, role, content, status, created_at, usage, model, "
                    "error, parent_id, owner, turn) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, user_id, ? "
                    "FROM conversations c WHERE id = ? AND (? IS NULL OR EXISTS ("
                    "SELECT 1 FROM messages p WHERE p.id = ? AND p.conversation_id = c.id)) "
                    "ON CONFLICT (turn) WHERE turn IS NOT NULL AND role = 'assistant' DO NOTHING",
                    (conversation_id, role, content, status, now, usage, model, error,
                     parent_id, turn, conversation_id, parent_id, parent_id))
                if cur.rowcount == 0:
                    if turn is not None:
                        stored = conn.execute(
                            f"SELECT {TURN_COLUMNS} FROM messages "
                            "WHERE turn = ? AND role = 'assistant'", (turn,)).fetchone()
                        if stored is not None:
                            raise TurnStored(message_row(stored))
                    gone = conn.execute("SELECT 1 FROM conversations WHERE id = ?",
                                        (conversation_id,)).fetchone() is None
                    # Say which went: the client shows this message to the user.
                    raise NotFound("conversation not found" if gone else
                                   "the message this reply answers was deleted")
            except sqlite3.IntegrityError as err:  # the conversation was deleted meanwhile
                raise NotFound("conversation not found") from err
            row: MessageRow = {"id": cast(int, cur.lastrowid), "role": role, "content": content,
                               "status": status, "created_at": now, "parent_id": parent_id}
            if model:
                row["model"] = model
            if error:
                row["error"] = orjson.loads(error)
            return row

        return await self._db.write(op)

    async def unmark(self, conversation_id: int | None, turn: str) -> None:
        """End the turn's mark on its conversation (no reply of it was stored)."""
        await self._db.write(lambda conn: conn.execute(
            "UPDATE conversations SET running_turn = NULL WHERE running_turn = ? "
            "AND (? IS NULL OR id = ?)", (turn, conversation_id, conversation_id)))

    async def renew(self, marks: list[tuple[int, str]]) -> None:
        """Renew running turns' marks (one statement each, in one transaction)."""
        now = now_iso()
        await self._db.write(lambda conn: conn.executemany(
            "UPDATE conversations SET running_since = ? WHERE id = ? AND running_turn = ?",
            [(now, conv, turn) for conv, turn in marks]))

    async def edit(self, user_id: int, conversation_id: int, message_id: int, content: str,
                   history: int = 0, quota: Quota = NO_QUOTA, model: str | None = None,
                   turn: TurnMark | None = None
                   ) -> tuple[MessageRow, HistoryRows, ConversationUse]:
        """A new version of one of the user's messages: a sibling of it (what followed the old
        one stays, on its own branch) that becomes the active leaf. Returns it, up to `history`
        messages on the path before it, newest first, and the conversation's model."""
        now = now_iso()

        def op(conn: sqlite3.Connection) -> tuple[MessageRow, HistoryRows, ConversationUse]:
            _, role, parent = owned_message(conn, user_id, conversation_id, message_id)
            if role != "user":
                raise NotFound("only a user's message can be edited")
            found = _settings(conn, conversation_id)
            free(found[2], found[3], turn)
            check(conn, user_id, quota, chars=len(content))
            ident = _insert_user(conn, conversation_id, parent, content, now, user_id,
                                 turn.id if turn is not None else None)
            return _user_row(ident, content, now, parent), path_rows(conn, parent, history), \
                _use(conn, conversation_id, model, found)

        return await self._db.write(op)

    async def regenerate(self, user_id: int, conversation_id: int, message_id: int | None,
                         history: int = 0, model: str | None = None,
                         turn: TurnMark | None = None
                         ) -> tuple[MessageRow, HistoryRows, ConversationUse]:
        """Ask a user's message again: `message_id` (or the question of the reply it names;
        None: the last question on the active branch). Earlier replies stay as alternatives,
        but for failed ones with no text; the question becomes the active leaf until the new
        reply comes. Returns it, the history before it, newest first, and the model."""

        def op(conn: sqlite3.Connection) -> tuple[MessageRow, HistoryRows, ConversationUse]:
            asked = message_id
            if asked is None:
                asked = conn.execute(
                    "SELECT leaf_id FROM conversations WHERE id = ? AND user_id = ?",
                    (conversation_id, user_id)).fetchone()
                asked = asked[0] if asked else None
                if asked is None:
                    raise NotFound("this conversation has no message to answer again")
            _, role, parent = owned_message(conn, user_id, conversation_id, asked)
            if role == "assistant" and parent is not None:
                asked = parent
                _, role, parent = owned_message(conn, user_id, conversation_id, asked)
            if role != "user":
                raise NotFound("no user's message to answer again")
            found = _settings(conn, conversation_id)
            free(found[2], found[3], turn)
            conn.execute("DELETE FROM messages WHERE conversation_id = ? AND parent_id = ? "
                         "AND role = 'assistant' AND content = '' AND NOT EXISTS (SELECT 1 FROM "
                         "messages c WHERE c.conversation_id = messages.conversation_id "
                         "AND c.parent_id = messages.id)", (conversation_id, asked))
            conn.execute("UPDATE conversations SET leaf_id = ?, running_turn = ?, "
                         "running_since = ? WHERE id = ?",
                         (asked, turn.id if turn else found[2], now_iso() if turn else found[3],
                          conversation_id))
            row = conn.execute("SELECT content, status, created_at FROM messages WHERE id = ?",
                               (asked,)).fetchone()
            stored: MessageRow = {"id": asked, "role": "user", "content": row[0],
                                  "status": row[1], "created_at": row[2], "parent_id": parent}
            return stored, path_rows(conn, parent, history), \
                _use(conn, conversation_id, model, found)

        return await self._db.write(op)


def _insert_user(conn: sqlite3.Connection, conversation_id: int, parent: int | None,
                 content: str, now: str, user_id: int, turn: str | None) -> int:
    """A user's message under `parent`; the insert trigger makes it the active leaf (and
    marks the conversation with its `turn`)."""
    return cast(int, conn.execute(
        "INSERT INTO messages (conversation_id, role, content, created_at, parent_id, owner, "
        "turn) VALUES (?, 'user', ?, ?, ?, ?, ?)",
        (conversation_id, content, now, parent, user_id, turn)).lastrowid)


def _user_row(ident: int, content: str, now: str, parent: int | None) -> MessageRow:
    return {"id": ident, "role": "user", "content": content, "status": "complete",
            "created_at": now, "parent_id": parent}


def _settings(conn: sqlite3.Connection, conversation_id: int) -> Any:
    """The conversation's (model, settings, running_turn, running_since) row."""
    return conn.execute("SELECT model, settings, running_turn, running_since FROM conversations "
                        "WHERE id = ?", (conversation_id,)).fetchone()


def _use(conn: sqlite3.Connection, conversation_id: int, model: str | None,
         found: Any) -> ConversationUse:
    """The conversation's model and settings, from its `found` (model, settings) row; a
    `model` given becomes its model."""
    if model is not None and model != found[0]:
        conn.execute("UPDATE conversations SET model = ? WHERE id = ?", (model, conversation_id))
    return ConversationUse(model if model is not None else found[0],
                           orjson.loads(found[1]) if found[1] else {})
