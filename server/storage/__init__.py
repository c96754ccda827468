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
    UsageDelta,
    UsageStore,
    UserStore,
)
from .errors import (
    Conflict,
    DatabaseBusy,
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
)
from .sqlite import open_sqlite

if TYPE_CHECKING:
    from ..config import DatabaseConfig


async def open_storage(config: DatabaseConfig) -> Storage:
    """Open the configured backend (SQLite: the file is created and migrated)."""
    return await open_sqlite(config.path, readers=config.read_connections,
                             busy_timeout_ms=config.busy_timeout_ms,
                             synchronous=config.synchronous, max_batch=config.max_batch)


__all__ = [
    "NO_QUOTA", "AccountSettingsStore", "AuditStore", "AuthEvent", "AuthEventStore",
    "BranchStore", "Conflict",
    "ConversationStore", "DatabaseBusy", "InvalidCursor", "KeyStore", "MemoryNotFound",
    "MemoryStore", "MessageStore", "NewConversation", "NewMessage", "NotFound", "OverQuota",
    "PromptStore", "Quota", "QuotaStore", "SchemaTooNew", "SearchStore", "Storage",
    "StorageError",
    "StorageQuotaExceeded", "StorageStats", "SummaryStore", "TokenStore", "TooManyConversations",
    "TooManyKeys", "TooManyMemories", "TransferStore", "UsageDelta", "UsageStore", "UserStore",
    "open_storage",
]
