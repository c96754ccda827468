"""SQLite files under test: plain connections beside the app's own Database."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

from server.storage.sqlite import Database

MakeDb = Callable[..., Awaitable[Database]]


def plain(path: Path, timeout: float = 5.0) -> sqlite3.Connection:
    """A plain sqlite3 connection in autocommit mode (explicit BEGIN/COMMIT)."""
    return sqlite3.connect(str(path), isolation_level=None, timeout=timeout)
