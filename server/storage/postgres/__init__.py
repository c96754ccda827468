"""The PostgreSQL backend: every store over one batching writer and a pool of readers."""

from __future__ import annotations

from ..base import Storage
from .audit import PostgresAudit
from .auth_events import PostgresAuthEvents
from .branches import PostgresBranches
from .conversations import PostgresConversations
from .db import Database
from .keys import PostgresKeys
from .memories import PostgresAccountSettings, PostgresMemories
from .messages import PostgresMessages
from .migrations import LATEST, migrate
from .prompts import PostgresPrompts
from .quotas import PostgresQuotas
from .search import PostgresSearch
from .summaries import PostgresSummaries
from .tokens import PostgresTokens
from .transfer import PostgresTransfer
from .usage import PostgresUsage
from .users import PostgresUsers


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
        self.conversations = PostgresConversations(db)
        self.messages = PostgresMessages(db)
        self.branches = PostgresBranches(db)
        self.summaries = PostgresSummaries(db)
        self.transfer = PostgresTransfer(db)
        self.search = PostgresSearch(db)
        self.prompts = PostgresPrompts(db)

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
