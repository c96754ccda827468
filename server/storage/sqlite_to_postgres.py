"""Copy a SQLite database into an empty, migrated PostgreSQL database, then verify the copy.

Every table both schemas share is copied as it is (ids kept), in one PostgreSQL transaction:
a failure leaves the target empty. The schema's triggers are off during the copy: the counters
they keep (message counts, active leaves, stored characters, owners) are copied too, as SQLite
kept them. Each identity sequence then starts past the highest id SQLite ever gave (deleted
rows included), so no id is ever given twice. The copy is verified by each table's row count
and a sample of rows compared value by value.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import StorageError
from .postgres.migrations import migrate as migrate_postgres
from .sqlite.migrations import LATEST as SQLITE_LATEST

# Parents before children (foreign keys hold at every row). Table and column names in the SQL
# below come from this list and the two schemas, never from input; values are parameters.
ORDER = ("users", "conversations", "messages", "summaries", "api_keys", "usage_daily",
         "user_storage", "revoked_tokens", "audit_log", "memories", "auth_events")
SAMPLE = 100  # rows compared per table
CHUNK = 5000  # rows read from SQLite and sent at once


class CopyError(StorageError):
    """The copy cannot be made (a source too old, a target not empty, a schema mismatch)."""


class _Differs(Exception):
    def __init__(self, report: CopyReport) -> None:
        super().__init__("the copy differs from its source")
        self.report = report


@dataclass
class TableReport:
    """One table: the rows each side holds and how many sampled rows matched."""

    name: str
    source: int = 0
    target: int = 0
    sampled: int = 0
    differing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the counts agree and every sampled row is the same on both sides."""
        return self.source == self.target and not self.differing


@dataclass
class CopyReport:
    """What was copied and whether the copy checks out (and so was kept)."""

    tables: list[TableReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every table checks out."""
        return all(t.ok for t in self.tables)


def open_source(path: str) -> sqlite3.Connection:
    """The SQLite file, read-only, at the latest schema (CopyError otherwise)."""
    if not Path(path).is_file():
        raise CopyError(f"no SQLite database at {path}")
    conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True,
                           isolation_level=None)
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version != SQLITE_LATEST:
        conn.close()
        raise CopyError(f"{path} is at schema v{version}, this chatgate's is v{SQLITE_LATEST}: "
                        "start chatgate once on it (it migrates the file), stop it, then copy")
    return conn


def _columns(source: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in source.execute(f"PRAGMA table_info({table})")]


async def _target_columns(conn: Any, table: str) -> dict[str, str]:
    """The table's columns in PostgreSQL that take values (generated ones left out), by type."""
    rows = await conn.fetch(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = $1 AND is_generated = 'NEVER'",
        table)
    return {r[0]: r[1] for r in rows}


def _converter(kind: str) -> Callable[[Any], Any]:
    """SQLite's value as PostgreSQL's column type takes it (its booleans are 0/1)."""
    if kind == "boolean":
        return lambda v: None if v is None else bool(v)
    if kind in ("bigint", "integer", "smallint"):
        return lambda v: None if v is None else int(v)
    if kind == "text":
        return lambda v: None if v is None else str(v)
    return lambda v: v


async def _tables(source: sqlite3.Connection, conn: Any) -> list[tuple[str, list[str],
                                                                       list[str]]]:
    """(table, shared columns, PostgreSQL types) of each table to copy, in ORDER."""
    present = {r[0] for r in source.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    out = []
    for table in ORDER:
        target = await _target_columns(conn, table)
        if table not in present:
            continue  # a table this SQLite schema does not have yet: nothing to copy
        if not target:
            raise CopyError(f"table {table} is missing in PostgreSQL")
        columns = _columns(source, table)
        missing = [c for c in columns if c not in target]
        if missing:
            raise CopyError(f"PostgreSQL's {table} has no column {', '.join(missing)}")
        out.append((table, columns, [target[c] for c in columns]))
    return out


def _chunks(source: sqlite3.Connection, table: str, columns: list[str],
            convert: list[Callable[[Any], Any]]) -> Iterator[list[tuple[Any, ...]]]:
    cursor = source.execute(f"SELECT {', '.join(columns)} FROM {table}")
    while rows := cursor.fetchmany(CHUNK):
        yield [tuple(f(v) for f, v in zip(convert, row, strict=True)) for row in rows]


async def copy(source: sqlite3.Connection, conn: Any,
               progress: Callable[[str, int], None] = lambda table, rows: None) -> CopyReport:
    """Copy every table into the (migrated, empty) PostgreSQL database on `conn` and verify."""
    await migrate_postgres(conn)
    tables = await _tables(source, conn)
    for table, _, _ in tables:
        if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})"):
            raise CopyError(f"the PostgreSQL database is not empty (table {table} has rows): "
                            "copy into a new database")
    source.execute("BEGIN")  # one snapshot of the file, whatever writes it meanwhile
    try:
        async with conn.transaction():
            for table, columns, kinds in tables:
                await conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
                convert = [_converter(k) for k in kinds]
                copied = 0
                for rows in _chunks(source, table, columns, convert):
                    await conn.copy_records_to_table(table, records=rows, columns=columns)
                    copied += len(rows)
                    progress(table, copied)
                await conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
            await _advance_sequences(source, conn, [t for t, c, _ in tables if "id" in c])
            report = await verify(source, conn, tables)
            if not report.ok:
                raise _Differs(report)  # rolls the whole copy back
        return report
    except _Differs as differs:
        return differs.report
    finally:
        source.execute("ROLLBACK")


async def _advance_sequences(source: sqlite3.Connection, conn: Any, tables: list[str]) -> None:
    """Each identity sequence past the highest id SQLite gave in that table."""
    given = dict(source.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
    for table in tables:
        sequence = await conn.fetchval("SELECT pg_get_serial_sequence($1, 'id')", table)
        if sequence is None:
            continue
        top = max(int(given.get(table) or 0),
                  int(await conn.fetchval(f"SELECT coalesce(max(id), 0) FROM {table}")))
        if top > 0:
            await conn.execute("SELECT setval($1::regclass, $2)", sequence, top)


async def _key_columns(conn: Any, table: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = $1::regclass AND i.indisprimary "
        "ORDER BY array_position(i.indkey, a.attnum)", table)
    return [r[0] for r in rows]


async def verify(source: sqlite3.Connection, conn: Any,
                 tables: list[tuple[str, list[str], list[str]]]) -> CopyReport:
    """Compare each table's count and a random sample of its rows on both sides."""
    report = CopyReport()
    for table, columns, kinds in tables:
        entry = TableReport(table)
        report.tables.append(entry)
        entry.source = int(source.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        entry.target = int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
        keys = await _key_columns(conn, table)
        if not keys:
            raise CopyError(f"PostgreSQL's {table} has no primary key to compare rows by")
        picked = source.execute(
            f"SELECT {', '.join(columns)} FROM {table} ORDER BY random() LIMIT ?",
            (SAMPLE,)).fetchall()
        convert = [_converter(k) for k in kinds]
        where = " AND ".join(f"{k} = ${n}" for n, k in enumerate(keys, 1))
        for row in picked:
            expected = tuple(f(v) for f, v in zip(convert, row, strict=True))
            key = [expected[columns.index(k)] for k in keys]
            found = await conn.fetchrow(
                f"SELECT {', '.join(columns)} FROM {table} WHERE {where}", *key)
            entry.sampled += 1
            if found is None or tuple(found) != expected:
                entry.differing.append(", ".join(f"{k}={v}" for k, v in zip(keys, key,
                                                                             strict=True)))
    return report
