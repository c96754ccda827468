"""All SQL lives in this package, behind one store per concern (`base.py`); `sqlite/` is the
backend today, and a second backend is a second module set beside it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import (
    NO_QUOTA,
    AccountSettingsStore,
    AuditStore,
    AuthEvent,
    AuthEventStore,
    BranchStore,
    ConversationStore,
    KeyStore,
    MemoryStore,
    MessageStore,
    NewConversation,
    NewMessage,
    PromptStore,
    Quota,
    QuotaStore,
    SearchStore,
    Storage,
    StorageStats,
    SummaryStore,
    TokenStore,
    TransferStore,
    TurnMark,
    UsageDelta,
    UsageStore,
    UserStore,
)
from .errors import (
    Conflict,
    ConversationBusy,
    DatabaseBusy,
    DatabaseUnavailable,
    InvalidCursor,
    MemoryNotFound,
    NotFound,
    OverQuota,
    SchemaTooNew,
    StorageError,
    StorageQuotaExceeded,
    TooManyConversations,
    TooManyKeys,
    TooManyMemories,
    TurnStored,
)
from .sqlite import open_sqlite

if TYPE_CHECKING:
    from ..config import DatabaseConfig


async def open_storage(config: DatabaseConfig) -> Storage:
    """Open the configured backend: PostgreSQL when `url` is set (connected and migrated),
    else SQLite (the file is created and migrated)."""
    if config.url:
        from .postgres import open_postgres  # asyncpg is imported only when it is used

        return await open_postgres(config.url, pool_size=config.pool_size,
                                   busy_timeout_ms=config.busy_timeout_ms,
                                   connect_timeout_s=config.connect_timeout_s,
                                   max_batch=config.max_batch)
    return await open_sqlite(config.path, readers=config.read_connections,
                             busy_timeout_ms=config.busy_timeout_ms,
                             synchronous=config.synchronous, max_batch=config.max_batch)


__all__ = [
    "NO_QUOTA", "AccountSettingsStore", "AuditStore", "AuthEvent", "AuthEventStore", "BranchStore",
    "Conflict", "ConversationBusy", "ConversationStore", "DatabaseBusy", "DatabaseUnavailable",
    "InvalidCursor", "KeyStore", "MemoryNotFound", "MemoryStore", "MessageStore",
    "NewConversation", "NewMessage", "NotFound", "OverQuota", "PromptStore", "Quota", "QuotaStore",
    "SchemaTooNew", "SearchStore", "Storage", "StorageError", "StorageQuotaExceeded",
    "StorageStats", "SummaryStore", "TokenStore", "TooManyConversations", "TooManyKeys",
    "TooManyMemories", "TransferStore", "TurnMark", "TurnStored", "UsageDelta", "UsageStore",
    "UserStore", "open_storage",
]
