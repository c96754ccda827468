"""SQL for messages: a user's turn (new, edited or asked again) with the history before it, and
replies."""

from __future__ import annotations

from typing import Any, NoReturn

import asyncpg
import orjson
from cachetools import LRUCache

from ..base import NO_QUOTA, Quota, TurnMark
from ..errors import NotFound, StorageQuotaExceeded, TurnStored
from ..refusals import free
from ..rows import (
    SUMMARY,
    TURN_COLUMNS,
    ConversationUse,
    HistoryRows,
    MessageRow,
    merge_settings,
    message_row,
    now_iso,
)
from .branches import lock_conversation, owned_message, path_rows
from .db import Database
from .quotas import check


class PostgresMessages:
    """Messages in PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db
        # conversation -> its owner, as this node's turns wrote them: a reply's write is
        # ordered by its owner too (Database.write), so it must be known before it runs.
        self._owners: LRUCache[int, int] = LRUCache(maxsize=100_000)

    def _order(self, conversation_id: int) -> tuple[int, int] | None:
        owner = self._owners.get(conversation_id)
        return None if owner is None else (owner, conversation_id)

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

        async def op(conn: Any) -> tuple[int, MessageRow, HistoryRows, ConversationUse]:
            if conversation_id is None:
                own, own_text = merge_settings("", settings or {})
                conv, ident = await _first_turn(conn, user_id, title, content, now, quota,
                                                model, turn.id if turn else None, own_text)
                return conv, _user_row(ident, content, now, None), [], ConversationUse(model, own)
            ident, parent, rows, use = await _turn(conn, user_id, conversation_id, content,
                                                   now, history, quota, model, turn)
            return conversation_id, _user_row(ident, content, now, parent), rows, use

        done = await self._db.write(op, (user_id, conversation_id or 0))
        self._owners[done[0]] = user_id  # written: it is the user's
        return done

    async def add(self, conversation_id: int, role: str, content: str,
                  status: str = "complete", usage: str | None = None,
                  model: str | None = None, error: str | None = None,
                  parent_id: int | None = None, turn: str | None = None) -> MessageRow:
        """Append a message (a reply: with the model that wrote it, under the message it
        answers) to a conversation the caller has already checked. NotFound if the
        conversation, or that message, was deleted meanwhile; TurnStored if `turn`'s reply
        is stored already (by this node or another: the unique index decides)."""
        now = now_iso()

        async def op(conn: Any) -> MessageRow:
            # The conversation's row is locked first (the insert trigger's update locks it
            # anyway, only later: every write to a conversation takes the same order), then
            # the parent's, FOR KEY SHARE. Under READ COMMITTED another node's branch delete
            # may have removed the parent without committing yet: this statement's snapshot
            # still shows it, but the lock waits for that delete and, once it commits, finds
            # the row gone, so nothing is inserted. A delete that comes later waits for the
            # conversation until this reply commits, then deletes it with its subtree. No
            # reply outlives its question. (SQLite's one writer runs them one after another.)
            try:
                ident = await conn.fetchval(
                    "WITH c AS MATERIALIZED (SELECT id, user_id FROM conversations "
                    "WHERE id = $1 FOR NO KEY UPDATE), "
                    "p AS MATERIALIZED (SELECT m.id FROM c JOIN messages m ON m.id = $9::bigint "
                    "AND m.conversation_id = c.id FOR KEY SHARE OF m) "
                    "INSERT INTO messages "
                    "(conversation_id, role, content, status, created_at, usage, model, "
                    "error, parent_id, owner, turn) SELECT c.id, $2, $3, $4, $5, $6, $7, $8, "
                    "$9, c.user_id, $10 FROM c WHERE $9::bigint IS NULL OR EXISTS "
                    "(SELECT 1 FROM p) "
                    "ON CONFLICT (turn) WHERE turn IS NOT NULL AND role = 'assistant' DO NOTHING "
                    "RETURNING id",
                    conversation_id, role, content, status, now, usage, model, error, parent_id,
                    turn)
            except asyncpg.ForeignKeyViolationError as err:  # deleted meanwhile
                raise NotFound("conversation not found") from err
            if ident is None:
                if turn is not None:
                    stored = await conn.fetchrow(f"SELECT {TURN_COLUMNS} FROM messages "
                                                 "WHERE turn = $1 AND role = 'assistant'", turn)
                    if stored is not None:
                        raise TurnStored(message_row(stored))
                gone = await conn.fetchval("SELECT NOT EXISTS (SELECT 1 FROM conversations "
                                           "WHERE id = $1)", conversation_id)
                # Say which went: the client shows this message to the user.
                raise NotFound("conversation not found" if gone else
                               "the message this reply answers was deleted")
            row: MessageRow = {"id": int(ident), "role": role, "content": content,
                               "status": status, "created_at": now, "parent_id": parent_id}
            if model:
                row["model"] = model
            if error:
                row["error"] = orjson.loads(error)
            return row

        return await self._db.write(op, self._order(conversation_id))

    async def unmark(self, conversation_id: int | None, turn: str) -> None:
        """End the turn's mark on its conversation (no reply of it was stored)."""
        async def op(conn: Any) -> None:
            await conn.execute("UPDATE conversations SET running_turn = NULL "
                               "WHERE running_turn = $2 AND ($1::bigint IS NULL OR id = $1)",
                               conversation_id, turn)

        await self._db.write(op, None if conversation_id is None
                             else self._order(conversation_id))

    async def renew(self, marks: list[tuple[int, str]]) -> None:
        """Renew running turns' marks (one statement for all)."""
        now = now_iso()

        async def op(conn: Any) -> None:
            await conn.execute(
                "UPDATE conversations c SET running_since = $1 FROM unnest($2::bigint[], "
                "$3::text[]) AS m(id, turn) WHERE c.id = m.id AND c.running_turn = m.turn",
                now, [conv for conv, _ in marks], [turn for _, turn in marks])

        await self._db.write(op)

    async def edit(self, user_id: int, conversation_id: int, message_id: int, content: str,
                   history: int = 0, quota: Quota = NO_QUOTA, model: str | None = None,
                   turn: TurnMark | None = None
                   ) -> tuple[MessageRow, HistoryRows, ConversationUse]:
        """A new version of one of the user's messages: a sibling of it (what followed the old
        one stays, on its own branch) that becomes the active leaf. Returns it, up to `history`
        messages on the path before it, newest first, and the conversation's model."""
        now = now_iso()

        async def op(conn: Any) -> tuple[MessageRow, HistoryRows, ConversationUse]:
            found = await lock_conversation(conn, user_id, conversation_id)
            _, role, parent = await owned_message(conn, user_id, conversation_id, message_id)
            if role != "user":
                raise NotFound("only a user's message can be edited")
            free(found[3], found[4], turn)
            await check(conn, user_id, quota, chars=len(content))
            ident = await _insert_user(conn, conversation_id, parent, content, now, user_id,
                                       turn.id if turn else None)
            return _user_row(ident, content, now, parent), \
                await path_rows(conn, parent, history), \
                await _use(conn, conversation_id, model, found)

        done = await self._db.write(op, (user_id, conversation_id))
        self._owners[conversation_id] = user_id  # written: it is the user's
        return done

    async def regenerate(self, user_id: int, conversation_id: int, message_id: int | None,
                         history: int = 0, model: str | None = None,
                         turn: TurnMark | None = None
                         ) -> tuple[MessageRow, HistoryRows, ConversationUse]:
        """Ask a user's message again: `message_id` (or the question of the reply it names;
        None: the last question on the active branch). Earlier replies stay as alternatives,
        but for failed ones with no text; the question becomes the active leaf until the new
        reply comes. Returns it, the history before it, newest first, and the model."""

        async def op(conn: Any) -> tuple[MessageRow, HistoryRows, ConversationUse]:
            found = await lock_conversation(conn, user_id, conversation_id)
            asked = message_id
            if asked is None:
                asked = None if found is None else found[2]
                if asked is None:
                    raise NotFound("this conversation has no message to answer again")
            _, role, parent = await owned_message(conn, user_id, conversation_id, asked)
            if role == "assistant" and parent is not None:
                asked = int(parent)
                _, role, parent = await owned_message(conn, user_id, conversation_id, asked)
            if role != "user":
                raise NotFound("no user's message to answer again")
            free(found[3], found[4], turn)
            await conn.execute(
                "DELETE FROM messages d WHERE d.conversation_id = $1 AND d.parent_id = $2 "
                "AND d.role = 'assistant' AND d.content = '' AND NOT EXISTS (SELECT 1 FROM "
                "messages c WHERE c.conversation_id = d.conversation_id "
                "AND c.parent_id = d.id)", conversation_id, asked)
            if turn is None:
                await conn.execute("UPDATE conversations SET leaf_id = $1 WHERE id = $2",
                                   asked, conversation_id)
            else:
                await conn.execute("UPDATE conversations SET leaf_id = $1, running_turn = $3, "
                                   "running_since = $4 WHERE id = $2",
                                   asked, conversation_id, turn.id, now_iso())
            row = await conn.fetchrow("SELECT content, status, created_at FROM messages "
                                      "WHERE id = $1", asked)
            stored: MessageRow = {"id": asked, "role": "user", "content": row[0],
                                  "status": row[1], "created_at": row[2], "parent_id": parent}
            return stored, await path_rows(conn, parent, history), \
                await _use(conn, conversation_id, model, found)

        done = await self._db.write(op, (user_id, conversation_id))
        self._owners[conversation_id] = user_id  # written: it is the user's
        return done


# A turn in an existing conversation in one round trip: the conversation locked (before the
# user's counters, as every write takes them: no deadlock between nodes), the stored-text cap
# checked under the user's lock, the message stored after the active leaf, and the history
# walked up from that leaf (as branches.path_rows) in the same statement, which also says
# whether its snapshot sees the leaf (one written meanwhile by another node's transaction
# that held the lock is not: then the walk is done again). Each step of the walk is a
# primary-key lookup (see branches._PATH).
_TURN = """
WITH RECURSIVE c AS MATERIALIZED (
    SELECT model, settings, leaf_id, running_turn, running_since FROM conversations
    WHERE id = $1 AND user_id = $2 FOR UPDATE),
u AS MATERIALIZED (
    SELECT chars FROM user_storage WHERE user_id = $2 AND $6::bigint > 0
    AND EXISTS (SELECT 1 FROM c) FOR UPDATE),
ins AS (
    INSERT INTO messages (conversation_id, role, content, created_at, parent_id, owner, turn)
    SELECT $1, 'user', $3, $4, c.leaf_id, $2, $7 FROM c
    WHERE ($6::bigint = 0 OR coalesce((SELECT chars FROM u), 0) + length($3) <= $6)
    AND ($7::text IS NULL OR c.running_turn IS NULL OR c.running_turn = $7
         OR c.running_since < $8)
    RETURNING id),
path(id, kept) AS (
    SELECT leaf_id, 0 FROM c WHERE leaf_id IS NOT NULL AND $5::int > 0
    UNION ALL
    SELECT m.parent_id, path.kept + (m.content <> '')::int FROM path
    CROSS JOIN LATERAL (SELECT id, parent_id, content FROM messages
                        WHERE messages.id = path.id LIMIT 1) m
    WHERE m.parent_id IS NOT NULL AND path.kept + (m.content <> '')::int < $5
    AND NOT EXISTS (SELECT 1 FROM summaries s WHERE s.message_id = m.id)),
walk AS (
    SELECT m.id, m.role, m.content, s.content AS summary, path.kept FROM path
    CROSS JOIN LATERAL (SELECT id, role, content FROM messages
                        WHERE messages.id = path.id LIMIT 1) m
    LEFT JOIN summaries s ON s.message_id = m.id
    WHERE m.content <> '' OR s.content IS NOT NULL)
SELECT c.model, c.settings, c.leaf_id, (SELECT id FROM ins), (SELECT chars FROM u),
    (SELECT array_agg(w.id ORDER BY w.kept, w.id DESC) FROM walk w),
    (SELECT array_agg(w.role ORDER BY w.kept, w.id DESC) FROM walk w),
    (SELECT array_agg(w.content ORDER BY w.kept, w.id DESC) FROM walk w),
    (SELECT array_agg(w.summary ORDER BY w.kept, w.id DESC) FROM walk w),
    EXISTS (SELECT 1 FROM messages WHERE id = c.leaf_id), c.running_turn, c.running_since
FROM c
"""


async def _turn(conn: Any, user_id: int, conversation_id: int, content: str, now: str,
                history: int, quota: Quota, model: str | None, turn: TurnMark | None
                ) -> tuple[int, int | None, HistoryRows, ConversationUse]:
    """A user's message after the active leaf of an existing conversation: its id, parent,
    the history before it and the conversation's model and settings (NotFound,
    StorageQuotaExceeded, ConversationBusy: nothing stored)."""
    cap = quota.chars if content else 0
    row = await conn.fetchrow(_TURN, conversation_id, user_id, content, now, history, cap,
                              turn.id if turn else None, turn.stale_before if turn else None)
    if row is None:
        raise NotFound("conversation not found")
    found, parent = row[:3], row[2]
    if row[3] is None:  # another turn's mark, or the cap refused it (check says why)
        free(row[10], row[11], turn)
        await _refused(conn, user_id, quota, chars=len(content))
    rows: HistoryRows = []
    for ident, role, text, summary in zip(row[5] or [], row[6] or [], row[7] or [],
                                          row[8] or [], strict=True):
        if summary is not None:
            rows.append((ident, SUMMARY, summary))
            break
        rows.append((ident, role, text))
    if parent is not None and not row[9]:
        # The leaf was written by another node while this statement waited for the lock: the
        # statement's snapshot is older than it, so the history is read again, afresh.
        rows = await path_rows(conn, parent, history)
    return int(row[3]), parent, rows, await _use(conn, conversation_id, model, found)


# A new conversation and its first message in one round trip: the user's counters locked
# (when a cap is set) and both caps checked, then both rows.
_FIRST = """
WITH u AS MATERIALIZED (
    SELECT conversations, chars FROM user_storage WHERE user_id = $1
    AND ($5::bigint > 0 OR $6::bigint > 0) FOR UPDATE),
conv AS (
    INSERT INTO conversations (user_id, title, created_at, updated_at, model, settings)
    SELECT $1, $2, $3, $3, $4, $9
    WHERE ($5::bigint = 0 OR coalesce((SELECT conversations FROM u), 0) + 1 <= $5)
    AND ($6::bigint = 0
         OR coalesce((SELECT chars FROM u), 0) + length($2) + length($7) + length($9) <= $6)
    RETURNING id),
msg AS (
    INSERT INTO messages (conversation_id, role, content, created_at, owner, turn)
    SELECT id, 'user', $7, $3, $1, $8 FROM conv RETURNING id)
SELECT (SELECT id FROM conv), (SELECT id FROM msg)
"""


async def _first_turn(conn: Any, user_id: int, title: str, content: str, now: str,
                      quota: Quota, model: str | None, turn: str | None,
                      settings: str) -> tuple[int, int]:
    """A new conversation (with its `settings`, JSON text or '') with the user's first
    message (marked with its `turn`): their ids (TooManyConversations, StorageQuotaExceeded:
    nothing stored)."""
    row = await conn.fetchrow(_FIRST, user_id, title, now, model, quota.conversations,
                              quota.chars, content, turn, settings)
    if row[0] is None:
        await _refused(conn, user_id, quota, conversations=1,
                       chars=len(title) + len(content) + len(settings))
    return int(row[0]), int(row[1])


async def _refused(conn: Any, user_id: int, quota: Quota, *, conversations: int = 0,
                   chars: int = 0) -> NoReturn:
    """Raise the error of a write a cap refused (quotas.check words it, reading the same
    counters under the same lock)."""
    await check(conn, user_id, quota, conversations=conversations, chars=chars)
    raise StorageQuotaExceeded("this would take your stored text past your quota")


async def _insert_user(conn: Any, conversation_id: int, parent: int | None, content: str,
                       now: str, user_id: int, turn: str | None) -> int:
    """A user's message under `parent`; the insert trigger makes it the active leaf (and
    marks the conversation with its `turn`)."""
    return int(await conn.fetchval(
        "INSERT INTO messages (conversation_id, role, content, created_at, parent_id, owner, "
        "turn) VALUES ($1, 'user', $2, $3, $4, $5, $6) RETURNING id",
        conversation_id, content, now, parent, user_id, turn))


def _user_row(ident: int, content: str, now: str, parent: int | None) -> MessageRow:
    return {"id": ident, "role": "user", "content": content, "status": "complete",
            "created_at": now, "parent_id": parent}


async def _use(conn: Any, conversation_id: int, model: str | None,
               found: Any) -> ConversationUse:
    """The conversation's model and settings, from its `found` (model, settings) row; a
    `model` given becomes its model."""
    if model is not None and model != found[0]:
        await conn.execute("UPDATE conversations SET model = $1 WHERE id = $2",
                           model, conversation_id)
    return ConversationUse(model if model is not None else found[0],
                           orjson.loads(found[1]) if found[1] else {})
