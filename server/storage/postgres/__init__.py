"""The PostgreSQL backend: every store over one batching writer and a pool of readers."""

from __future__ import annotations

from typing import Any

from ..base import Storage
from ..errors import StorageError
from .audit import PostgresAudit
from .auth_events import PostgresAuthEvents
from .db import Database
from .keys import PostgresKeys
from .memories import PostgresAccountSettings, PostgresMemories
from .migrations import LATEST, migrate
from .quotas import PostgresQuotas
from .tokens import PostgresTokens
from .usage import PostgresUsage
from .users import PostgresUsers


class _NotYet:
    """A conversation-side store not written for PostgreSQL yet: every call fails cleanly."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, method: str) -> Any:
        async def missing(*_: Any, **__: Any) -> Any:
            raise StorageError(f"{self._name}.{method} is not available on PostgreSQL yet")

        return missing


class PostgresStorage(Storage):
    """Storage on one PostgreSQL database (`db` is open to tests for direct checks)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.stats = db.stats
        self.users = PostgresUsers(db)
        self.tokens = PostgresTokens(db)
        self.quotas = PostgresQuotas(db)
        self.keys = PostgresKeys(db)
        self.usage = PostgresUsage(db)
        self.audit = PostgresAudit(db)
        self.memories = PostgresMemories(db)
        self.account_settings = PostgresAccountSettings(db)
        self.auth_events = PostgresAuthEvents(db)
        # The conversation side (its own modules, on the pg-data branch).
        self.conversations = _NotYet("conversations")
        self.messages = _NotYet("messages")
        self.branches = _NotYet("branches")
        self.summaries = _NotYet("summaries")
        self.transfer = _NotYet("transfer")
        self.search = _NotYet("search")
        self.prompts = _NotYet("prompts")

    async def close(self) -> None:
        """Finish every queued write, then close the connections."""
        await self.db.close()


async def open_postgres(url: str, *, pool_size: int, busy_timeout_ms: int,
                        connect_timeout_s: float, max_batch: int) -> PostgresStorage:
    """Connect to the database at `url` and migrate its schema."""
    db = Database(url, pool_size=pool_size, busy_timeout_ms=busy_timeout_ms,
                  connect_timeout_s=connect_timeout_s, max_batch=max_batch)
    await db.open(migrate)
    return PostgresStorage(db)


__all__ = ["LATEST", "Database", "PostgresStorage", "migrate", "open_postgres"]
