"""SQL for full-text search over a user's own messages."""

from __future__ import annotations

import sqlite3
from typing import Any

from ..rows import SearchHit
from ..textsearch import CANDIDATES, CLOSE, OPEN, highlights, prefix_last, query_words, rank
from .db import Database

__all__ = ["CANDIDATES", "SqliteSearch", "fts_query", "rank"]


def fts_query(text: str) -> str | None:
    """Turn any user text into a safe FTS5 query: quoted words, the last one as a prefix."""
    words = query_words(text)
    if not words:
        return None
    quoted = ['"' + w.replace('"', '""') + '"' for w in words]
    if prefix_last(words):
        quoted[-1] += "*"
    return " ".join(quoted)


class SqliteSearch:
    """FTS5 search in SQLite."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def search(self, user_id: int, text: str, limit: int) -> list[SearchHit]:
        """Best matches first among the user's messages (the owner is matched inside the index)."""
        words = fts_query(text)
        if words is None:
            return []
        query = f'owner : "{int(user_id)}" AND content : ({words})'
        candidates = max(CANDIDATES, limit)

        def op(conn: sqlite3.Connection) -> list[Any]:
            # Ranking and snippets cost per row, and FTS5's bm25() counts every row that holds
            # each word (a walk of the whole index for a common one): only the newest
            # `candidates` matches are ranked, here (the index walks its rowids backwards and
            # stops there), and only the `limit` best of them get a snippet and a title.
            ranked = conn.execute(
                "SELECT rowid, content FROM messages_fts WHERE messages_fts MATCH ? "
                "ORDER BY rowid DESC LIMIT ?", (query, candidates)).fetchall()
            best = [r[0] for r in rank(ranked, text)[:limit]]
            if not best:
                return []
            marks = ",".join("?" * len(best))
            rows = conn.execute(
                "SELECT m.conversation_id, m.id, c.title, "
                f"snippet(messages_fts, 0, '{OPEN}', '{CLOSE}', '…', 16), m.created_at "
                "FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid "
                "JOIN conversations c ON c.id = m.conversation_id "
                f"WHERE messages_fts MATCH ? AND messages_fts.rowid IN ({marks}) "
                "AND c.user_id = ?", (query, *best, user_id)).fetchall()
            order = {ident: n for n, ident in enumerate(best)}
            return sorted(rows, key=lambda r: order[r[1]])

        hits: list[SearchHit] = []
        for row in await self._db.read(op):
            snippet, marks = highlights(row[3])
            hits.append({"conversation_id": row[0], "message_id": row[1], "title": row[2],
                         "snippet": snippet, "highlights": marks, "created_at": row[4]})
        return hits
