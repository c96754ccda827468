"""The SQLite backend: every store over one batching writer and a few readers."""

from __future__ import annotations

from ..base import Storage
from .audit import SqliteAudit
from .branches import SqliteBranches
from .conversations import SqliteConversations
from .db import Database
from .events import SqliteAuthEvents
from .keys import SqliteKeys
from .memories import SqliteAccountSettings, SqliteMemories
from .messages import SqliteMessages
from .migrations import LATEST, migrate
from .prompts import SqlitePrompts
from .quotas import SqliteQuotas
from .search import SqliteSearch
from .summaries import SqliteSummaries
from .tokens import SqliteTokens
from .transfer import SqliteTransfer
from .usage import SqliteUsage
from .users import SqliteUsers


class SqliteStorage(Storage):
    """Storage on one SQLite file (`db` is open to tests for direct checks)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.stats = db.stats
        self.users = SqliteUsers(db)
        self.tokens = SqliteTokens(db)
        self.auth_events = SqliteAuthEvents(db)
        self.conversations = SqliteConversations(db)
        self.messages = SqliteMessages(db)
        self.branches = SqliteBranches(db)
        self.summaries = SqliteSummaries(db)
        self.transfer = SqliteTransfer(db)
        self.quotas = SqliteQuotas(db)
        self.search = SqliteSearch(db)
        self.keys = SqliteKeys(db)
        self.usage = SqliteUsage(db)
        self.audit = SqliteAudit(db)
        self.memories = SqliteMemories(db)
        self.account_settings = SqliteAccountSettings(db)
        self.prompts = SqlitePrompts(db)

    async def close(self) -> None:
        """Finish every queued write, then close the connections."""
        await self.db.close()


async def open_sqlite(path: str, *, readers: int, busy_timeout_ms: int, synchronous: str,
                      max_batch: int) -> SqliteStorage:
    """Open (creating and migrating) the database file."""
    db = Database(path, readers=readers, busy_timeout_ms=busy_timeout_ms,
                  synchronous=synchronous, max_batch=max_batch)
    await db.open(migrate)
    return SqliteStorage(db)


__all__ = ["LATEST", "Database", "SqliteStorage", "migrate", "open_sqlite"]
