"""PostgreSQL's search steps (walk the user's newest messages, walk on while matches are dense,
else the GIN index) each give exactly the user's newest matches, newest first."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from server.config import DatabaseConfig
from server.storage import NewConversation, NewMessage, Storage, open_storage
from server.storage.postgres import search
from tests.support.storage import rows

AT = "2026-01-01T00:00:00.000Z"


@pytest.fixture
async def pg(on_postgres: str) -> AsyncIterator[Storage]:
    """A Storage on the session's PostgreSQL database, emptied."""
    storage = await open_storage(DatabaseConfig(url=on_postgres, pool_size=2))
    yield storage
    await storage.close()


def words_of(n: int) -> str:
    """Message n's text: `dense` in every 2nd, `mid` in every 6th, `sparse` in every 40th."""
    said = [f"filler{n}"]
    said += ["dense"] if n % 2 == 0 else []
    said += ["mid"] if n % 6 == 0 else []
    said += ["sparse"] if n % 40 == 0 else []
    return " ".join(said)


async def seed(store: Storage, user: int, count: int, start: int) -> None:
    """`count` messages in conversations of 10 (ids interleave with another user's)."""
    for first in range(start, start + count, 10):
        await store.transfer.import_one(user, NewConversation("c", AT, tuple(
            NewMessage("user", words_of(n), AT) for n in range(first, first + 10))))


async def candidates(store: Storage, user: int, text: str, wanted: int) -> list[int]:
    words = search.ts_words(text)
    assert words is not None

    async def op(conn: Any) -> list[int]:
        return [int(r[0]) for r in await search._candidates(conn, user, words, wanted)]

    return await store.db.read(op)  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize("text", ["dense", "mid", "sparse", "filler1", "dense mid", "fill",
                                  "absent"])
async def test_each_step_gives_the_newest_matches(pg: Storage, text: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search, "WALK", 20)
    monkeypatch.setattr(search, "WALK_MORE", 60)
    heavy = (await pg.users.create("heavy", "h"))["id"]
    light = (await pg.users.create("light", "h"))["id"]
    for block in range(0, 400, 100):  # the two users' messages interleave
        await seed(pg, heavy, 100, block)
        await seed(pg, light, 10, block)
    for user in (heavy, light):
        truth = [int(ident) for ident, content in await rows(
            pg, "SELECT id, content FROM messages WHERE owner = ? ORDER BY id DESC", user)
            if all(any(w == t or (w == text.split()[-1] and len(w) > 1 and t.startswith(w))
                       for t in content.split()) for w in text.split())]
        for wanted in (1, 10, 25):
            assert await candidates(pg, user, text, wanted) == truth[:wanted], (user, wanted)


async def test_the_owner_is_a_word_no_text_makes(pg: Storage) -> None:
    user = (await pg.users.create("u", "h"))["id"]
    await pg.messages.add_user_message(user, None, f"#{user} # {user} owner#{user}", "t")
    lexemes = await rows(pg, "SELECT unnest(tsvector_to_array(search)) FROM messages")
    assert sorted(r[0] for r in lexemes) == sorted([f"#{user}", str(user), "owner"])


async def test_the_index_step_reads_only_the_index_matches(pg: Storage) -> None:
    """Its plan is bitmap scans of the GIN index, whatever the statistics say: never the
    whole table, never the primary key walked backwards through everyone's messages."""
    user = (await pg.users.create("planned", "h"))["id"]
    await seed(pg, user, 50, 0)

    async def op(conn: Any) -> str:
        async with conn.transaction(readonly=True):
            await conn.execute(search._ONLY_BITMAPS)
            plan = await conn.fetch("EXPLAIN " + search._INDEXED, search.owner_word(user),
                                    search.ts_words("dense"), 10)
        return "\n".join(r[0] for r in plan)

    plan = await pg.db.read(op)  # type: ignore[attr-defined]
    assert "Bitmap Index Scan on messages_search" in plan, plan
    assert "Seq Scan" not in plan and "messages_pkey" not in plan, plan
