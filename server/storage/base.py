"""What the services may ask of storage: one interface per concern, whatever the backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from .rows import (
    AdminUserRow,
    AuditRow,
    ConversationRow,
    ConversationUse,
    HistoryRows,
    KeyRow,
    MemoryRow,
    MessageRow,
    SearchHit,
    UsageRow,
    UserRow,
)

# (user_id, day, key_id, requests, prompt_tokens, completion_tokens)
UsageDelta = tuple[int, str, int, int, int, int]


@dataclass(frozen=True, slots=True)
class Quota:
    """A user's storage caps, checked inside the write that would pass them (0 = no cap)."""

    conversations: int = 0
    chars: int = 0  # conversation titles and message texts together


NO_QUOTA = Quota()


@dataclass(frozen=True, slots=True)
class TurnMark:
    """A turn starting in a conversation, marked on it until its reply is stored (one at a
    time, on every node): its id, and the time (as created_at) before which another turn's
    mark is stale (its node died without ending it)."""

    id: str
    stale_before: str


@dataclass(frozen=True, slots=True)
class NewMessage:
    """One message of an imported conversation (created_at: as now_iso writes it)."""

    role: str  # "user" | "assistant"
    content: str
    created_at: str
    status: str = "complete"
    model: str | None = None
    error: str | None = None  # JSON text {"code", "message"}
    parent: int | None = None  # the index of its parent in the conversation's messages


@dataclass(frozen=True, slots=True)
class NewConversation:
    """A whole conversation to store at once (an import)."""

    title: str
    created_at: str
    messages: tuple[NewMessage, ...]  # each after its parent
    model: str | None = None
    leaf: int | None = None  # the index of the active leaf (None: the last message)


@dataclass
class StorageStats:
    """Counters that tests and benchmarks read (a token-cache hit must not move them)."""

    reads: int = 0
    writes: int = 0
    batches: int = 0
    retries: int = 0  # writes run again after losing a deadlock to another node (PostgreSQL)
    replays: int = 0  # batches run again op by op after one of their ops failed (PostgreSQL)


class UserStore(Protocol):
    """Accounts."""

    async def create(self, username: str, password_hash: str, *, role: str = "user",
                     status: str = "active", must_change_password: bool = False,
                     first_is_admin: bool = False) -> UserRow:
        """Insert a user; Conflict when the name (case-insensitive) is taken. With
        `first_is_admin`, the first account of an empty database is an active admin."""

    async def credentials(self, username: str) -> tuple[UserRow, str, int] | None:
        """The user, password hash and token epoch for a login, or None."""

    async def principal(self, user_id: int, jti: str, epoch: int = 0) -> UserRow | None:
        """The token's user if it still exists, the token is not revoked and was issued in the
        user's current token epoch, in one query."""

    async def get(self, user_id: int) -> UserRow | None:
        """One user, or None."""

    async def update(self, user_id: int, *, status: str | None = None,
                     must_change_password: bool | None = None,
                     limits: dict[str, int] | None = None, password_hash: str | None = None,
                     new_epoch: bool = False) -> UserRow:
        """Change what is given (a new epoch kills every token of the user); NotFound."""

    async def page(self, limit: int, cursor: str | None,
                   month_start: str) -> tuple[list[AdminUserRow], str | None]:
        """Users by id, with usage since `month_start` and last activity, and the next cursor
        (InvalidCursor)."""

    async def promote(self, usernames: list[str]) -> list[str]:
        """Make these accounts active admins; the names that changed."""

    async def delete(self, user_id: int, keep_last_admin: bool = False) -> bool:
        """Delete a user and everything they own; with `keep_last_admin`, Conflict when they
        are the last active admin."""


class TokenStore(Protocol):
    """Revoked token ids."""

    async def revoke(self, jti: str, expires_at: int, user_id: int) -> None:
        """Record a token id of the user as revoked until it would have expired anyway (and,
        in the same transaction, an auth event naming both)."""


@dataclass(frozen=True, slots=True)
class AuthEvent:
    """A change that kills cached verifications: a revoked token (`jti`), a deleted API key
    (`key_id`), or anything about the user (neither: status, token epoch, role, deletion)."""

    id: int
    at: int  # unix seconds
    user_id: int
    jti: str | None
    key_id: int | None


class AuthEventStore(Protocol):
    """The auth events, written by the database itself with each change they report."""

    async def latest(self) -> int:
        """The newest event's id (0 when there is none)."""

    async def since(self, after_id: int, limit: int) -> list[AuthEvent]:
        """Events with an id above `after_id`, oldest first, at most `limit`."""

    async def prune(self, before_unix: int) -> None:
        """Delete the events older than `before_unix`."""


class ConversationStore(Protocol):
    """Conversations, every call scoped to the owning user."""

    async def create(self, user_id: int, title: str,
                     quota: Quota = NO_QUOTA, titled: bool = False) -> ConversationRow:
        """Create an empty conversation (TooManyConversations, StorageQuotaExceeded);
        `titled`: the user gave its title (never replaced by a generated one)."""

    async def page(self, user_id: int, limit: int,
                   cursor: str | None) -> tuple[list[ConversationRow], str | None]:
        """A page, newest activity first, and the cursor of the next one (InvalidCursor)."""

    async def get(self, user_id: int,
                  conversation_id: int) -> tuple[ConversationRow, list[MessageRow]]:
        """A conversation and all its messages, oldest first (NotFound)."""

    async def rename(self, user_id: int, conversation_id: int, title: str,
                     quota: Quota = NO_QUOTA) -> ConversationRow:
        """Change the title, the user's from now on (NotFound; StorageQuotaExceeded if a
        longer title passes it)."""

    async def title_source(self, user_id: int, conversation_id: int) -> str | None:
        """Where the title came from: 'first_line' (automatic), 'generated' or 'user'; None
        if the user has no such conversation."""

    async def set_generated_title(self, user_id: int, conversation_id: int,
                                  title: str) -> bool:
        """Store a generated title only if the title is still the automatic first-line one;
        True if stored."""

    async def configure(self, user_id: int, conversation_id: int, changes: dict[str, Any],
                        quota: Quota = NO_QUOTA) -> ConversationRow:
        """Change some of a conversation's settings, None removing one (NotFound;
        StorageQuotaExceeded: no change)."""

    async def delete(self, user_id: int, conversation_id: int) -> None:
        """Delete a conversation and its messages (NotFound)."""


class TransferStore(Protocol):
    """Whole conversations in and out: exports page through them, imports write each at once."""

    async def export_page(self, user_id: int, after_id: int, limit: int
                          ) -> list[tuple[ConversationRow, list[MessageRow]]]:
        """Up to `limit` of the user's conversations with id > `after_id`, by id, each with
        its messages oldest first, in one read."""

    async def import_one(self, user_id: int, conversation: NewConversation,
                         quota: Quota = NO_QUOTA) -> ConversationRow:
        """Store a conversation and its messages in one transaction, within the user's caps
        (TooManyConversations, StorageQuotaExceeded: nothing stored)."""


class MessageStore(Protocol):
    """Messages: a turn's writes, each returning what the prompt needs in the same step."""

    async def add_user_message(self, user_id: int, conversation_id: int | None, content: str,
                               title: str, history: int = 0, quota: Quota = NO_QUOTA,
                               model: str | None = None, turn: TurnMark | None = None,
                               settings: dict[str, Any] | None = None
                               ) -> tuple[int, MessageRow, HistoryRows, ConversationUse]:
        """Store a user's message (creating the conversation when none is given, with its
        own `settings`, their text counted in the caps) and return its conversation, the
        row, up to `history` earlier messages, newest first, and the conversation's model
        and settings (`model`, if given, becomes its model) (TooManyConversations,
        StorageQuotaExceeded, ConversationBusy while another `turn` is marked on it: nothing
        stored)."""

    async def add(self, conversation_id: int, role: str, content: str,
                  status: str = "complete", usage: str | None = None,
                  model: str | None = None, error: str | None = None,
                  parent_id: int | None = None, turn: str | None = None) -> MessageRow:
        """Append a message under `parent_id` to a conversation the caller has already
        checked (NotFound if it or the parent is gone); `usage` and `error` are JSON text.
        A `turn`'s reply is stored once, on any node (TurnStored with it after that), and
        ends the turn's mark on the conversation."""

    async def unmark(self, conversation_id: int | None, turn: str) -> None:
        """End a turn's mark on its conversation when no reply of it is stored (None: on
        whichever conversation it marked, for a turn that never learned it)."""

    async def renew(self, marks: list[tuple[int, str]]) -> None:
        """Renew running turns' marks, each (conversation, turn) still marked on it."""

    async def edit(self, user_id: int, conversation_id: int, message_id: int, content: str,
                   history: int = 0, quota: Quota = NO_QUOTA, model: str | None = None,
                   turn: TurnMark | None = None
                   ) -> tuple[MessageRow, HistoryRows, ConversationUse]:
        """Store a new version of a user's message beside it (a new branch, made active);
        return it, up to `history` messages before it, newest first, and the conversation's
        model (NotFound, StorageQuotaExceeded, ConversationBusy: no change)."""

    async def regenerate(self, user_id: int, conversation_id: int, message_id: int | None,
                         history: int = 0, model: str | None = None,
                         turn: TurnMark | None = None
                         ) -> tuple[MessageRow, HistoryRows, ConversationUse]:
        """Make a user's message (or the question of a reply; None: the active branch's
        last) the active leaf to answer again; return it, the history before it and the
        conversation's model (NotFound, ConversationBusy: no change)."""


class SummaryStore(Protocol):
    """Summaries of older turns, each kept on the last message it covers."""

    async def since_last(self, user_id: int, conversation_id: int, message_id: int,
                         limit: int) -> HistoryRows:
        """Up to `limit` messages on the path to the message, newest first, back to the
        latest summary on it (last, role "summary"); [] if it is not the user's."""

    async def save(self, message_id: int, content: str, model: str | None) -> bool:
        """Keep the summary of the path up to the message; False if it is gone."""


class BranchStore(Protocol):
    """Branches of a conversation's tree of messages."""

    async def switch(self, user_id: int, conversation_id: int, message_id: int) -> None:
        """Make the newest leaf under the message active (NotFound)."""

    async def delete(self, user_id: int, conversation_id: int, message_id: int) -> int:
        """Delete the message and its subtree; return how many went (NotFound)."""


class MemoryStore(Protocol):
    """A user's long-term memories, every call scoped to that user."""

    async def all(self, user_id: int) -> list[MemoryRow]:
        """The user's memories, newest first."""

    async def add(self, user_id: int, content: str, max_count: int,
                  quota: Quota = NO_QUOTA) -> MemoryRow:
        """Store an active memory; TooManyMemories when the user keeps `max_count` already,
        StorageQuotaExceeded past their stored-text cap (both checked inside the write)."""

    async def update(self, user_id: int, memory_id: int, *, content: str | None = None,
                     enabled: bool | None = None, accept: bool = False,
                     quota: Quota = NO_QUOTA) -> MemoryRow:
        """Change what is given (`accept`: a proposed memory becomes active);
        MemoryNotFound."""

    async def delete(self, user_id: int, memory_id: int) -> None:
        """Delete one memory (MemoryNotFound for anyone else's)."""

    async def propose(self, user_id: int, contents: list[str], max_count: int,
                      quota: Quota = NO_QUOTA) -> list[MemoryRow]:
        """Store proposed memories, skipping any the user keeps already (same words, case
        and spacing aside) and stopping at `max_count` or the stored-text cap; the new rows."""

    async def profile(self, user_id: int) -> tuple[dict[str, Any], list[str]]:
        """The user's account settings and their enabled, active memories (newest first), in
        one read."""


class AccountSettingsStore(Protocol):
    """Each account's own settings: a small JSON object on the user."""

    async def configure(self, user_id: int, changes: dict[str, Any],
                        quota: Quota = NO_QUOTA) -> dict[str, Any]:
        """Change some settings (None removes one) and return them all (NotFound;
        StorageQuotaExceeded: no change)."""


class PromptStore(Protocol):
    """What the next turn of a conversation would send, read without writing anything."""

    async def next_turn(self, user_id: int, conversation_id: int,
                        history: int) -> tuple[HistoryRows, ConversationUse]:
        """Up to `history` messages a new turn would carry, newest first, and the
        conversation's model and settings (NotFound)."""


class QuotaStore(Protocol):
    """What each user keeps stored, counted by the database as it changes (never a scan)."""

    async def stored(self, user_id: int) -> tuple[int, int]:
        """The user's (conversations, characters) stored now."""


class SearchStore(Protocol):
    """Full-text search over a user's own messages."""

    async def search(self, user_id: int, text: str, limit: int) -> list[SearchHit]:
        """Best matches first; any text is safe (it is never query syntax)."""


class KeyStore(Protocol):
    """API keys: only a keyed hash of each is stored."""

    async def create(self, user_id: int, name: str, prefix: str, key_hash: str,
                     expires_at: int | None, rpm: int | None, tpm: int | None,
                     max_keys: int = 0) -> KeyRow:
        """Store a new key's hash under its (unique) prefix; TooManyKeys when the user
        already has `max_keys` (0 = no cap), checked inside the write itself."""

    async def list(self, user_id: int) -> list[KeyRow]:
        """The user's keys, newest first."""

    async def delete(self, user_id: int, key_id: int) -> None:
        """Delete one of the user's keys (NotFound for anyone else's)."""

    async def by_prefix(self, prefix: str) -> tuple[KeyRow, str, UserRow] | None:
        """A key, its hash and its user, found by the key's prefix."""

    async def touch(self, used: dict[int, str]) -> None:
        """Record when each key was last used."""

    async def delete_all(self, user_id: int) -> tuple[int, ...]:
        """Delete every key of the user; the ids deleted."""


class UsageStore(Protocol):
    """Token usage per user, key and UTC day."""

    async def add(self, deltas: list[UsageDelta]) -> None:
        """Add many counters at once."""

    async def days(self, user_id: int, first: str, last: str) -> list[UsageRow]:
        """The user's counters between two days (inclusive), oldest first."""

    async def tokens_since(self, user_id: int, first: str) -> int:
        """Tokens the user has used from day `first` on."""


class AuditStore(Protocol):
    """The audit log of admin actions, append-only."""

    async def add(self, actor_id: int | None, actor: str, action: str, target_id: int | None,
                  target: str | None, detail: dict[str, Any]) -> AuditRow:
        """Append one row (`detail`: a small JSON object, never a secret)."""

    async def page(self, limit: int, cursor: str | None) -> tuple[list[AuditRow], str | None]:
        """Newest first, and the cursor of the next page (InvalidCursor)."""


class Storage:
    """Everything stored: one object per concern, provided by a backend (SQLite today)."""

    users: UserStore
    tokens: TokenStore
    auth_events: AuthEventStore
    conversations: ConversationStore
    messages: MessageStore
    branches: BranchStore
    summaries: SummaryStore
    transfer: TransferStore
    quotas: QuotaStore
    search: SearchStore
    keys: KeyStore
    usage: UsageStore
    audit: AuditStore
    memories: MemoryStore
    account_settings: AccountSettingsStore
    prompts: PromptStore
    stats: StorageStats

    async def close(self) -> None:
        """Finish queued writes and release the backend."""
        raise NotImplementedError
