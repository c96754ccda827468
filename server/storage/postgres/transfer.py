"""SQL for export and import: whole conversations read by id pages, written one at a time."""

from __future__ import annotations

from typing import Any

from ..base import NO_QUOTA, NewConversation, Quota
from ..listing import COLUMNS, conversation_row
from ..rows import ConversationRow, MessageRow, message_row
from .db import Database
from .quotas import check

# The next `n` ids of the messages' identity, in order: an import names each message's parent
# by its id before the rows are written, so the whole conversation is one INSERT.
_IDS = ("SELECT nextval(pg_get_serial_sequence('messages', 'id')) "
        "FROM generate_series(1, $1::int) ORDER BY 1")


class PostgresTransfer:
    """Export pages and imports in PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def export_page(self, user_id: int, after_id: int, limit: int
                          ) -> list[tuple[ConversationRow, list[MessageRow]]]:
        """Up to `limit` conversations after `after_id` (by id), each with its messages, in
        two queries whatever the page's size."""

        async def op(conn: Any) -> tuple[list[Any], list[Any]]:
            convs = list(await conn.fetch(
                f"SELECT {COLUMNS} FROM conversations WHERE user_id = $1 AND id > $2 "
                "ORDER BY id LIMIT $3", user_id, after_id, limit))
            if not convs:
                return [], []
            msgs = list(await conn.fetch(
                "SELECT id, role, content, status, created_at, usage, model, error, parent_id, "
                "conversation_id FROM messages WHERE conversation_id = ANY($1::bigint[]) "
                "ORDER BY conversation_id, id", [c[0] for c in convs]))
            return convs, msgs

        convs, msgs = await self._db.read(op)
        by_conv: dict[int, list[MessageRow]] = {int(c[0]): [] for c in convs}
        for m in msgs:
            by_conv[int(m[9])].append(message_row(m))
        return [(conversation_row(c), by_conv[int(c[0])]) for c in convs]

    async def import_one(self, user_id: int, conversation: NewConversation,
                         quota: Quota = NO_QUOTA) -> ConversationRow:
        """One conversation and its messages in one write (a savepoint of its own: a failure
        leaves nothing of it), within the user's caps."""
        conv = conversation

        async def op(conn: Any) -> ConversationRow:
            chars = len(conv.title) + sum(len(m.content) for m in conv.messages)
            await check(conn, user_id, quota, conversations=1, chars=chars)
            ident = int(await conn.fetchval(
                "INSERT INTO conversations (user_id, title, created_at, updated_at, model, "
                "title_source) VALUES ($1, $2, $3, $3, $4, 'user') RETURNING id",
                user_id, conv.title, conv.created_at, conv.model))
            if conv.messages:
                ids = [int(r[0]) for r in await conn.fetch(_IDS, len(conv.messages))]
                parents = [ids[m.parent] if m.parent is not None else None
                           for m in conv.messages]
                # Rows go in in order (children after parents, as the insert trigger expects).
                await conn.execute(
                    "INSERT INTO messages (id, conversation_id, role, content, status, "
                    "created_at, model, error, parent_id, owner) "
                    "SELECT i, $2, r, c, s, t, mo, e, p, $3 FROM unnest($1::bigint[], "
                    "$4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], "
                    "$10::bigint[]) WITH ORDINALITY AS u(i, r, c, s, t, mo, e, p, n) ORDER BY n",
                    ids, ident, user_id, [m.role for m in conv.messages],
                    [m.content for m in conv.messages], [m.status for m in conv.messages],
                    [m.created_at for m in conv.messages], [m.model for m in conv.messages],
                    [m.error for m in conv.messages], parents)
                leaf = ids[-1] if conv.leaf is None else ids[conv.leaf]
                await conn.execute("UPDATE conversations SET leaf_id = $1 WHERE id = $2",
                                   leaf, ident)
            # The insert trigger moved updated_at to each message's time; keep the latest.
            row = await conn.fetchrow(f"SELECT {COLUMNS} FROM conversations WHERE id = $1",
                                      ident)
            return conversation_row(row)

        return await self._db.write(op)
