"""All SQL lives in this package; the rest of the server calls its plain async functions."""

from . import conversations, messages, search, tokens, users
from .db import Database, DbStats
from .errors import (Conflict, DatabaseBusy, InvalidCursor, NotFound, SchemaTooNew,
                     StorageError)
from .migrations import LATEST, migrate

__all__ = [
    "Conflict", "Database", "DatabaseBusy", "DbStats", "InvalidCursor", "LATEST", "NotFound",
    "SchemaTooNew", "StorageError", "conversations", "messages", "migrate", "search", "tokens", "users",
]
