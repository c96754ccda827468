"""SQL for full-text search over a user's own messages (a tsvector column with a GIN index).

A search ranks the user's newest CANDIDATES matches, as SQLite's does; a GIN index cannot give
its matches newest first, so it goes in steps. First it walks the user's newest WALK messages
through the (owner, id) index: a word the user writes often fills the candidates there, and a
user with no more messages than that is done. Otherwise what the walk found tells how dense
the matches are: when the rest of the candidates lie within WALK_MORE more messages, the walk
goes on; when they are sparser, the index finds them (the owner is a word of its own in each
message's tsvector, so the index intersects "this user" with the words), and there are then
few of them. Ranking, snippets and highlights are computed in Python (textsearch.py), exactly
as SQLite ranks and marks them.
"""

from __future__ import annotations

from typing import Any

from ..rows import SearchHit
from ..textsearch import CANDIDATES, highlights, prefix_last, query_words, rank, snippet
from .db import Database

# How many of a user's newest messages the first step reads (~0.7 µs each), and how many more
# a walk may read before the index is cheaper (its matches then are under ~1.5 %).
WALK = 2000
WALK_MORE = 12000
CONFIG = "chatgate_search"  # the text search configuration migration 2 creates

# The user's newest messages from $5 down (the owner's range, not `owner = $1`: an equality
# would let the planner walk the primary key backwards instead, through everyone's messages,
# and a user's may all be old), at most $3 of them, the matches of $2 among them, at most $4.
_WALK = (
    "SELECT id, content, conversation_id, created_at FROM (SELECT id, content, "
    "conversation_id, created_at, search FROM messages WHERE owner >= $1 AND owner <= $1 "
    "AND id < $5 ORDER BY owner DESC, id DESC LIMIT $3) recent "
    f"WHERE search @@ (SELECT to_tsquery('{CONFIG}', $2)) LIMIT $4"
)
# The id of the user's newest message after the first $2 below $3 (None: there is none).
_NEXT = ("SELECT id FROM messages WHERE owner >= $1 AND owner <= $1 AND id < $3 "
         "ORDER BY owner DESC, id DESC OFFSET $2 LIMIT 1")
# Bitmap scans only: the index's matches, sorted. A plan walking the primary key backwards
# would read everyone's messages; a sequential scan would read the whole table.
_ONLY_BITMAPS = "SET LOCAL enable_seqscan = off; SET LOCAL enable_indexscan = off"
_INDEXED = (
    "SELECT id, content, conversation_id, created_at FROM messages "
    f"WHERE search @@ ((SELECT to_tsquery('{CONFIG}', $2)) && $1::tsquery) "
    "ORDER BY id DESC LIMIT $3"
)
_TOP = 2 ** 63 - 1  # above every id


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
            rows = await _candidates(conn, user_id, words, candidates)
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


async def _candidates(conn: Any, user_id: int, words: str, wanted: int) -> list[Any]:
    """The user's newest `wanted` matches, newest first: walked, or found by the index."""
    rows = list(await conn.fetch(_WALK, user_id, words, WALK, wanted, _TOP))
    if len(rows) >= wanted:
        return rows
    after = await conn.fetchval(_NEXT, user_id, WALK, _TOP)
    if after is None:  # the walk saw every message of the user
        return rows
    if rows and (wanted - len(rows)) * WALK / len(rows) <= WALK_MORE:
        more = await conn.fetch(_WALK, user_id, words, WALK_MORE, wanted - len(rows),
                                int(after) + 1)
        return rows + list(more)
    async with conn.transaction(readonly=True):
        await conn.execute(_ONLY_BITMAPS)
        return list(await conn.fetch(_INDEXED, owner_word(user_id), words, wanted))
