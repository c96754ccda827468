"""SQL for full-text search over a user's own messages."""

from __future__ import annotations

import re
import sqlite3
import unicodedata
from typing import Any

from ..rows import SearchHit
from .db import Database

_WORD = re.compile(r"\w+", re.UNICODE)
_OPEN, _CLOSE = "\x02", "\x03"
# Matches ranked per search at most: the newest ones. A user's search then costs the same
# whether they have a hundred matching messages or a hundred thousand.
CANDIDATES = 200



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
                f"snippet(messages_fts, 0, '{_OPEN}', '{_CLOSE}', '…', 16), m.created_at "
                "FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid "
                "JOIN conversations c ON c.id = m.conversation_id "
                f"WHERE messages_fts MATCH ? AND messages_fts.rowid IN ({marks}) "
                "AND c.user_id = ?", (query, *best, user_id)).fetchall()
            order = {ident: n for n, ident in enumerate(best)}
            return sorted(rows, key=lambda r: order[r[1]])

        hits: list[SearchHit] = []
        for row in await self._db.read(op):
            snippet, marks = _highlights(row[3])
            hits.append({"conversation_id": row[0], "message_id": row[1], "title": row[2],
                         "snippet": snippet, "highlights": marks, "created_at": row[4]})
        return hits



def rank(rows: list[Any], text: str) -> list[Any]:
    """(rowid, content) rows best first: BM25 over the query's words (k1 1.2, b 0.75) within
    these rows. Every row holds every word (the query is an AND), so a word's rarity across
    the whole index would weigh all of them alike: it is left out. Ties: newest first."""
    words = _WORD.findall(_plain(text.casefold()))[:32]
    if not words or not rows:
        return rows
    prefix = words[-1] if len(words[-1]) >= 2 else None  # as fts_query makes it a prefix
    tokens = [_WORD.findall(_plain((row[1] or "").casefold())) for row in rows]
    average = max(1.0, sum(len(t) for t in tokens) / len(tokens))
    exact = set(words[:-1] if prefix else words)

    def score(row_tokens: list[str]) -> float:
        norm = 1.2 * (0.25 + 0.75 * len(row_tokens) / average)
        total = 0.0
        for word in exact:
            f = row_tokens.count(word)
            total += f * 2.2 / (f + norm)
        if prefix is not None:
            f = sum(1 for t in row_tokens if t.startswith(prefix))
            total += f * 2.2 / (f + norm)
        return total

    scored = sorted(zip(rows, tokens, strict=True), key=lambda rt: (-score(rt[1]), -rt[0][0]))
    return [row for row, _ in scored]


def _plain(text: str) -> str:
    """Text without diacritics, as the index's tokenizer (remove_diacritics 2) folds them."""
    if text.isascii():  # nothing to fold, and the usual case
        return text
    return "".join(c for c in unicodedata.normalize("NFKD", text)
                   if not unicodedata.combining(c))


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
