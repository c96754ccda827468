"""Search as data grows: builds a database with the project's own schema (1,000 users,
Zipf-distributed words, 20 messages a conversation; one heavy user with about 9.8 % of the
messages, one light one with about 0.094 %) and reports the p50 of a user's search through
the real storage code (reader threads or pool included), for a common word, a prefix and rare
words. SQLite by default; with `--url postgresql://...` the same messages go into that
PostgreSQL database (migrated by chatgate, then filled: it must be empty or hold this very
bench's data).

    .venv/bin/python bench/search_scale.py --messages 50000
    .venv/bin/python bench/search_scale.py --messages 1000000   # about 2 minutes to build
    .venv/bin/python bench/search_scale.py --messages 1000000 --url postgresql://u@host/db

The SQLite database is kept (`--path`, default /tmp/chatgate-search-<messages>.db) and reused;
so is a PostgreSQL database that already holds the messages.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import sqlite3
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from server.storage.sqlite import Database, migrate
from server.storage.sqlite.search import SqliteSearch

VOCABULARY = 20_000
WORDS_PER_MESSAGE = 12
HEAVY, LIGHT = 0.0983, 0.00094  # shares of all messages: the 98,300 and 940 of 1M


NOW = "2026-01-01T00:00:00.000Z"


def counts(messages: int, users: int = 1000) -> dict[int, int]:
    """How many messages each user writes (about `messages` in all)."""
    shares = {1: HEAVY, 2: LIGHT}
    rest = (1 - HEAVY - LIGHT) / (users - 2)
    return {u: round(messages * shares.get(u, rest)) for u in range(1, users + 1)}


def corpus(messages: int, users: int = 1000, seed: int = 7) -> Iterator[tuple[int, list[str]]]:
    """(user id, its texts) per conversation, in the order both backends store them: users
    1..`users` (ids as a fresh database gives them), 20 messages a conversation."""
    rng = random.Random(seed)
    cumulative = list(itertools.accumulate(1 / rank for rank in range(1, VOCABULARY + 1)))
    vocab = [f"w{n}" for n in range(VOCABULARY)]
    for user, count in counts(messages, users).items():
        for start in range(0, count, 20):
            yield user, [" ".join(rng.choices(vocab, cum_weights=cumulative,
                                              k=WORDS_PER_MESSAGE))
                         for _ in range(min(20, count - start))]


def build(path: Path, messages: int, users: int = 1000, seed: int = 7) -> None:
    """Fill an empty database (schema by the project's migrations) with `messages`."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    migrate(conn)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO users (username, password_hash, created_at) VALUES (?, 'x', "
                     "?)", [(f"u{n}", NOW) for n in range(users)])
    for user, texts in corpus(messages, users, seed):
        conv = conn.execute(
            "INSERT INTO conversations (user_id, title, created_at, updated_at) "
            "VALUES (?, 'c', ?, ?)", (user, NOW, NOW)).lastrowid
        parent = None
        for n, text in enumerate(texts):
            parent = conn.execute(
                "INSERT INTO messages (conversation_id, role, content, created_at, owner, "
                "parent_id) VALUES (?, ?, ?, ?, ?, ?)",
                (conv, ("user", "assistant")[n % 2], text, NOW, user, parent)).lastrowid
    conn.execute("COMMIT")
    conn.execute("INSERT INTO messages_fts(messages_fts) VALUES ('optimize')")
    conn.close()


async def build_postgres(url: str, messages: int, users: int = 1000, seed: int = 7) -> bool:
    """Migrate the database at `url` and fill it with the same messages as `build` (the
    counters and leaves the triggers would keep are written directly: a bulk load); False if
    it already held them."""
    import asyncpg

    from server.storage.postgres import migrate as pg_migrate
    from server.storage.postgres.schema_search import INDEXES

    conn = await asyncpg.connect(url)
    try:
        await pg_migrate(conn)
        if await conn.fetchval("SELECT count(*) FROM messages") == sum(
                counts(messages, users).values()):
            return False  # built by this bench before
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM users)"):
            raise SystemExit("the PostgreSQL database holds other data: give an empty one")
        convs: list[tuple[Any, ...]] = []
        rows: list[tuple[Any, ...]] = []
        for user, texts in corpus(messages, users, seed):
            conv = len(convs) + 1
            parent = None
            for n, text in enumerate(texts):
                rows.append((len(rows) + 1, conv, ("user", "assistant")[n % 2], text, NOW,
                             user, parent))
                parent = len(rows)
            convs.append((conv, user, "c", NOW, NOW, len(texts), parent))
        async with conn.transaction():
            await conn.execute("ALTER TABLE messages DISABLE TRIGGER USER; "
                               "DROP INDEX messages_search, messages_by_owner")
            await conn.copy_records_to_table(
                "users", records=[(n + 1, f"u{n}", "x", NOW) for n in range(users)],
                columns=["id", "username", "password_hash", "created_at"])
            await conn.copy_records_to_table(
                "conversations", records=convs, columns=[
                    "id", "user_id", "title", "created_at", "updated_at", "message_count",
                    "leaf_id"])
            await conn.copy_records_to_table(
                "messages", records=rows, columns=[
                    "id", "conversation_id", "role", "content", "created_at", "owner",
                    "parent_id"])
            await conn.execute("ALTER TABLE messages ENABLE TRIGGER USER")
            await conn.execute(INDEXES)
            for table in ("users", "conversations", "messages"):
                await conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                   f"(SELECT max(id) FROM {table}))")
        await conn.execute("VACUUM ANALYZE")
        return True
    finally:
        await conn.close()


Search = Callable[[int, str, int], Awaitable[Any]]


async def figures(search: Search, count: Callable[[int], Awaitable[int]],
                  runs: int) -> list[tuple[str, int, dict[str, float]]]:
    """The p50 of each query for the light user, then the heavy one."""
    out = []
    for user in (2, 1):
        mine = await count(user)
        row: dict[str, float] = {}
        for label, query in (("common word", "w0"), ("prefix w12*", "w12"),
                             ("rare words", "w19990 w19991")):
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                await search(user, query, 20)
                times.append((time.perf_counter() - t) * 1000)
            row[label] = statistics.median(times)
        out.append((f"user {user}", mine, row))
    return out


async def measure(path: Path, runs: int) -> list[tuple[str, int, dict[str, float]]]:
    db = Database(str(path), readers=3)
    await db.open(lambda conn: None)
    search = SqliteSearch(db)
    try:
        return await figures(search.search, lambda u: db.read(lambda c: c.execute(
            "SELECT count(*) FROM messages WHERE owner = ?", (u,)).fetchone()[0]), runs)
    finally:
        await db.close()


async def measure_postgres(url: str, runs: int) -> list[tuple[str, int, dict[str, float]]]:
    from server.storage.postgres import Database as PgDatabase
    from server.storage.postgres.search import PostgresSearch

    async def nothing(_: Any) -> None:
        return None

    db = PgDatabase(url, pool_size=3)
    await db.open(nothing)
    search = PostgresSearch(db)

    async def count(user: int) -> int:
        async def op(conn: Any) -> int:
            return int(await conn.fetchval("SELECT count(*) FROM messages WHERE owner = $1",
                                           user))
        return await db.read(op)

    try:
        return await figures(search.search, count, runs)
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--path", type=Path)
    parser.add_argument("--url", help="a PostgreSQL database (postgresql://...) to use instead")
    args = parser.parse_args()
    t = time.perf_counter()
    if args.url:
        if asyncio.run(build_postgres(args.url, args.messages)):
            print(f"built the PostgreSQL database in {time.perf_counter() - t:.0f} s")
        rows = asyncio.run(measure_postgres(args.url, args.runs))
        engine = "PostgreSQL"
    else:
        path = args.path or Path(f"/tmp/chatgate-search-{args.messages}.db")
        if not path.exists():
            build(path, args.messages)
            print(f"built {path} in {time.perf_counter() - t:.0f} s")
        rows = asyncio.run(measure(path, args.runs))
        engine = "SQLite"
    print("| database | user's messages | common word | prefix `w12*` | rare words |")
    print("|---|---|---|---|---|")
    for _, mine, row in rows:
        print(f"| {args.messages:,} messages ({engine}) | {mine:,} | " +
              " | ".join(f"{row[k]:.1f} ms" for k in ("common word", "prefix w12*",
                                                       "rare words")) + " |")


if __name__ == "__main__":
    main()
