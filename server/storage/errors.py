"""Storage errors: what a caller may need to tell apart, nothing about HTTP."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .rows import MessageRow


class StorageError(Exception):
    """Base class for storage failures."""


class NotFound(StorageError):
    """The row does not exist or belongs to someone else."""


class Conflict(StorageError):
    """A unique value is already taken."""


class DatabaseBusy(StorageError):
    """Another writer held the database past the busy timeout."""


class InvalidCursor(StorageError):
    """A pagination cursor that this storage did not issue."""


class SchemaTooNew(StorageError):
    """The database was written by a newer version of chatgate."""


class OverQuota(StorageError):
    """A write would take the user past one of their storage caps; nothing was written."""


class TooManyConversations(OverQuota):
    """The user already keeps the most conversations they may."""


class StorageQuotaExceeded(OverQuota):
    """The user's stored text would pass the most they may keep."""


class TooManyKeys(StorageError):
    """The user already has the most API keys they may; no key was made."""


class MemoryNotFound(NotFound):
    """The memory does not exist or belongs to someone else."""


class TooManyMemories(StorageError):
    """The user already keeps the most memories they may; nothing was added."""


class DatabaseUnavailable(DatabaseBusy):
    """The database server cannot be reached or cannot serve now (down, restarting, full);
    like DatabaseBusy, a caller may try again later."""


class ConversationBusy(StorageError):
    """Another turn is marked on the conversation (its reply is not stored yet); nothing
    was written."""


class TurnStored(StorageError):
    """A reply of this turn is stored already (by this node's earlier try, or by another
    node that ended the turn); nothing was written. `row` is the stored one."""

    def __init__(self, row: MessageRow) -> None:
        super().__init__("this turn's reply is stored already")
        self.row = row
