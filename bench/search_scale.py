"""Search as data grows: builds a database with the project's own schema (1,000 users,
Zipf-distributed words, 20 messages a conversation; one heavy user with about 9.8 % of the
messages, one light one with about 0.094 %) and reports the p50 of a user's search through
the real storage code (reader threads included), for a common word, a prefix and rare words.

    .venv/bin/python bench/search_scale.py --messages 50000
    .venv/bin/python bench/search_scale.py --messages 1000000   # about 2 minutes to build

The database is kept (`--path`, default /tmp/chatgate-search-<messages>.db) and reused.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from server.storage.sqlite import Database, migrate
from server.storage.sqlite.search import SqliteSearch

VOCABULARY = 20_000
WORDS_PER_MESSAGE = 12
HEAVY, LIGHT = 0.0983, 0.00094  # shares of all messages: the 98,300 and 940 of 1M


def build(path: Path, messages: int, users: int = 1000, seed: int = 7) -> None:
    """Fill an empty database (schema by the project's migrations) with `messages`."""
    rng = random.Random(seed)
    cumulative = list(itertools.accumulate(1 / rank for rank in range(1, VOCABULARY + 1)))
    vocab = [f"w{n}" for n in range(VOCABULARY)]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    migrate(conn)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO users (username, password_hash, created_at) VALUES (?, 'x', "
                     "'2026-01-01T00:00:00.000Z')", [(f"u{n}",) for n in range(users)])
    shares = {1: HEAVY, 2: LIGHT}
    rest = (1 - HEAVY - LIGHT) / (users - 2)
    counts = {u: round(messages * shares.get(u, rest)) for u in range(1, users + 1)}
    for user, count in counts.items():
        for start in range(0, count, 20):
            conv = conn.execute(
                "INSERT INTO conversations (user_id, title, created_at, updated_at) "
                "VALUES (?, 'c', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z')",
                (user,)).lastrowid
            parent = None
            for n in range(min(20, count - start)):
                text = " ".join(rng.choices(vocab, cum_weights=cumulative,
                                              k=WORDS_PER_MESSAGE))
                parent = conn.execute(
                    "INSERT INTO messages (conversation_id, role, content, created_at, owner, "
                    "parent_id) VALUES (?, ?, ?, '2026-01-01T00:00:00.000Z', ?, ?)",
                    (conv, ("user", "assistant")[n % 2], text, user, parent)).lastrowid
    conn.execute("COMMIT")
    conn.execute("INSERT INTO messages_fts(messages_fts) VALUES ('optimize')")
    conn.close()


async def measure(path: Path, runs: int) -> list[tuple[str, int, dict[str, float]]]:
    db = Database(str(path), readers=3)
    await db.open(lambda conn: None)
    search = SqliteSearch(db)
    out = []
    try:
        for user in (2, 1):
            mine = await db.read(lambda c, u=user: c.execute(
                "SELECT count(*) FROM messages WHERE owner = ?", (u,)).fetchone()[0])
            row: dict[str, float] = {}
            for label, query in (("common word", "w0"), ("prefix w12*", "w12"),
                                 ("rare words", "w19990 w19991")):
                times = []
                for _ in range(runs):
                    t = time.perf_counter()
                    await search.search(user, query, 20)
                    times.append((time.perf_counter() - t) * 1000)
                row[label] = statistics.median(times)
            out.append((f"user {user}", mine, row))
    finally:
        await db.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--path", type=Path)
    args = parser.parse_args()
    path = args.path or Path(f"/tmp/chatgate-search-{args.messages}.db")
    if not path.exists():
        t = time.perf_counter()
        build(path, args.messages)
        print(f"built {path} in {time.perf_counter() - t:.0f} s")
    rows = asyncio.run(measure(path, args.runs))
    print("| database | user's messages | common word | prefix `w12*` | rare words |")
    print("|---|---|---|---|---|")
    for _, mine, row in rows:
        print(f"| {args.messages:,} messages | {mine:,} | " +
              " | ".join(f"{row[k]:.1f} ms" for k in ("common word", "prefix w12*",
                                                       "rare words")) + " |")


if __name__ == "__main__":
    main()
