"""SQL for full-text search over a user's own messages."""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from ..rows import SearchHit
from .db import Database

_WORD = re.compile(r"\w+", re.UNICODE)
_OPEN, _CLOSE = "\x02", "\x03"



def fts_query(text: str) -> str | None:
    """Turn any user text into a safe FTS5 query: quoted words, the last one as a prefix."""
    words = _WORD.findall(text)[:32]
    if not words:
        return None
    quoted = ['"' + w.replace('"', '""') + '"' for w in words]
    if len(words[-1]) >= 2:  # a one-letter prefix matches nearly everything: not worth it
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

        def op(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                "SELECT m.conversation_id, m.id, c.title, "
                f"snippet(messages_fts, 0, '{_OPEN}', '{_CLOSE}', '…', 16), m.created_at "
                "FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid "
                "JOIN conversations c ON c.id = m.conversation_id "
                "WHERE messages_fts MATCH ? AND c.user_id = ? "
                "ORDER BY bm25(messages_fts) LIMIT ?", (query, user_id, limit)).fetchall()

        hits: list[SearchHit] = []
        for row in await self._db.read(op):
            snippet, marks = _highlights(row[3])
            hits.append({"conversation_id": row[0], "message_id": row[1], "title": row[2],
                         "snippet": snippet, "highlights": marks, "created_at": row[4]})
        return hits



def _highlights(marked: str) -> tuple[str, list[list[int]]]:
    """Strip the match markers; return plain text and [start, end) spans of the matches."""
    text: list[str] = []
    spans: list[list[int]] = []
    pos = 0
    start = -1
    for ch in marked:
        if ch == _OPEN:
            start = pos
        elif ch == _CLOSE and start >= 0:
            spans.append([start, pos])
            start = -1
        else:
            text.append(ch)
            pos += 1
    return "".join(text), spans
