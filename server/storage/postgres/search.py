"""SQL for full-text search over a user's own messages (a tsvector column with a GIN index).

A search walks the user's matches newest first and stops at CANDIDATES, as SQLite's does; a GIN
index cannot give its matches in order, so it takes two steps. First the user's newest WALK
messages, newest first, through the (owner, id) index: a word the user writes often fills the
candidates there. Only a user with more messages than that, searching for fewer matches, goes
on to the index: their matches (the owner is a word of its own in each message's tsvector, so
the index intersects "this user" with the words), newest first. Ranking, snippets and
highlights are computed in Python (textsearch.py), exactly as SQLite ranks and marks them.
"""

from __future__ import annotations

from typing import Any

from ..rows import SearchHit
from ..textsearch import CANDIDATES, highlights, prefix_last, query_words, rank, snippet
from .db import Database

# How many of a user's newest messages the first step reads at most (~0.7 µs each).
WALK = 2000
CONFIG = "chatgate_search"  # the text search configuration migration 2 creates

# The owner's range, not `owner = $1`: an equality would let the planner walk the primary key
# backwards instead, through everyone's messages (the owner's may all be old).
_RECENT = (
    "SELECT id, content, conversation_id, created_at FROM (SELECT id, content, "
    "conversation_id, created_at, search FROM messages WHERE owner >= $1 AND owner <= $1 "
    "ORDER BY owner DESC, id DESC LIMIT $3) recent "
    f"WHERE search @@ (SELECT to_tsquery('{CONFIG}', $2)) LIMIT $4"
)
_MORE = ("SELECT EXISTS (SELECT 1 FROM messages WHERE owner >= $1 AND owner <= $1 "
         "ORDER BY owner DESC, id DESC OFFSET $2)")
# Bitmap scans only: the index's matches, sorted. A plan walking the primary key backwards
# would read everyone's messages; a sequential scan would read the whole table.
_ONLY_BITMAPS = "SET LOCAL enable_seqscan = off; SET LOCAL enable_indexscan = off"
_INDEXED = (
    "SELECT id, content, conversation_id, created_at FROM messages "
    f"WHERE search @@ ((SELECT to_tsquery('{CONFIG}', $2)) && $1::tsquery) "
    "ORDER BY id DESC LIMIT $3"
)


def ts_words(text: str) -> str | None:
    """Any user text as to_tsquery's input: each word quoted (so nothing in it is an operator),
    all of them required, the last one also as a prefix."""
    words = query_words(text)
    if not words:
        return None
    quoted = ["'" + w.replace("\\", "\\\\").replace("'", "''") + "'" for w in words]
    if prefix_last(words):
        quoted[-1] += ":*"
    return " & ".join(quoted)


def owner_word(user_id: int) -> str:
    """The tsquery of the word each of the user's messages carries (`#<owner>`)."""
    return f"'#{int(user_id)}'"


class PostgresSearch:
    """Full-text search in PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def search(self, user_id: int, text: str, limit: int) -> list[SearchHit]:
        """Best matches first among the user's newest CANDIDATES matches."""
        words = ts_words(text)
        if words is None:
            return []
        candidates = max(CANDIDATES, limit)

        async def op(conn: Any) -> tuple[list[Any], dict[int, str]]:
            rows = list(await conn.fetch(_RECENT, user_id, words, WALK, candidates))
            if len(rows) < candidates and await conn.fetchval(_MORE, user_id, WALK):
                async with conn.transaction(readonly=True):
                    await conn.execute(_ONLY_BITMAPS)
                    rows = list(await conn.fetch(_INDEXED, owner_word(user_id), words,
                                                 candidates))
            best = rank(rows, text)[:limit]
            if not best:
                return [], {}
            titles = await conn.fetch(
                "SELECT id, title FROM conversations WHERE id = ANY($1::bigint[]) "
                "AND user_id = $2", list({r[2] for r in best}), user_id)
            return best, {int(r[0]): r[1] for r in titles}

        best, titles = await self._db.read(op)
        hits: list[SearchHit] = []
        for ident, content, conversation_id, created_at in best:
            if conversation_id not in titles:  # deleted between the two reads
                continue
            shown, marks = highlights(snippet(content, text))
            hits.append({"conversation_id": conversation_id, "message_id": ident,
                         "title": titles[conversation_id], "snippet": shown,
                         "highlights": marks, "created_at": created_at})
        return hits
