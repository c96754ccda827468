"""`run.py migrate`: copy a SQLite database into PostgreSQL, verified, with a clear report."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from .config import ConfigError, load_config
from .storage import StorageError
from .storage.sqlite_to_postgres import CHUNK, SAMPLE, CopyReport, copy, open_source
from .storage.urls import password_of, where


def main(argv: list[str]) -> int:
    """Parse `migrate`'s flags (or take both ends from the config) and copy; the exit status."""
    parser = argparse.ArgumentParser(
        prog="run.py migrate",
        description="Copy a chatgate SQLite database into an empty PostgreSQL database (ids "
                    "kept, sequences advanced), then verify every table's row count and a "
                    f"sample of {SAMPLE} rows each. Exit status 0: copied and verified; 1: "
                    "not copied (nothing is kept of a copy that differs); 2: bad arguments.")
    parser.add_argument("--config", default="config.yaml",
                        help="YAML config giving database.path and database.url "
                             "(default ./config.yaml)")
    parser.add_argument("--from", dest="source", help="the SQLite file (default: database.path)")
    parser.add_argument("--to", dest="target",
                        help="postgresql://... (default: database.url or CHATGATE_DATABASE__URL)")
    args = parser.parse_args(argv)
    source, target = args.source, args.target
    if source is None or target is None:
        try:
            config = load_config(args.config)
        except ConfigError as err:
            print(f"chatgate migrate: configuration error: {err}", file=sys.stderr)
            return 2
        source = source or config.database.path
        target = target or config.database.url
    if not target or not target.startswith(("postgresql://", "postgres://")):
        print("chatgate migrate: give the PostgreSQL database: --to postgresql://... (or "
              "database.url in the config)", file=sys.stderr)
        return 2
    return asyncio.run(_copy(source, target))


async def _copy(source_path: str, url: str) -> int:
    import asyncpg

    print(f"chatgate migrate: {source_path} (SQLite) -> {where(url)} (PostgreSQL)")
    started = time.perf_counter()
    try:
        source = open_source(source_path)
    except StorageError as err:
        print(f"chatgate migrate: {err}", file=sys.stderr)
        return 1
    conn: Any = None
    try:
        conn = await asyncpg.connect(url, timeout=10)
        report = await copy(source, conn, progress=_progress)
    except (StorageError, asyncpg.PostgresError) as err:
        said, secret = str(err), password_of(url)
        print(f"chatgate migrate: not copied: {said.replace(secret, '***') if secret else said}",
              file=sys.stderr)
        return 1
    except (OSError, asyncpg.InterfaceError) as err:
        print(f"chatgate migrate: cannot reach {where(url)}: {type(err).__name__}",
              file=sys.stderr)
        return 1
    finally:
        source.close()
        if conn is not None:
            await conn.close()
    _print(report, time.perf_counter() - started)
    return 0 if report.ok else 1


def _progress(table: str, rows: int) -> None:
    """A line per 100,000 rows of a big table, so a long copy shows it is moving."""
    if rows % 100_000 < CHUNK and rows >= 100_000:
        print(f"  copying {table}: {rows:,} rows", flush=True)


def _print(report: CopyReport, seconds: float) -> None:
    width = max(len(t.name) for t in report.tables)
    print(f"  {'table':<{width}}  {'SQLite':>10}  {'PostgreSQL':>10}  sample")
    for t in report.tables:
        sample = f"{t.sampled - len(t.differing)}/{t.sampled} rows equal"
        mark = "ok" if t.ok else "MISMATCH"
        print(f"  {t.name:<{width}}  {t.source:>10,}  {t.target:>10,}  {sample}  {mark}")
        for key in t.differing[:5]:
            print(f"      differs: {key}")
    total = sum(t.target for t in report.tables)
    if report.ok:
        print(f"copied and verified {total:,} rows in {seconds:.1f} s. Keep the same auth "
              "secret (auth.secret, or the chatgate.secret file beside database.path) so "
              "sessions, tokens and API keys stay valid; then set database.url and start.")
    else:
        print("the copy differs from the SQLite database: nothing was kept", file=sys.stderr)
