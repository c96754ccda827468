"""What a write past one of a user's caps, or into a conversation busy with another turn, is
refused with: the same rule and the same words on every backend (each reads its own way)."""

from __future__ import annotations

from .base import Quota, TurnMark
from .errors import ConversationBusy, StorageQuotaExceeded, TooManyConversations, TooManyMemories


def counted(quota: Quota, conversations: int, chars: int) -> bool:
    """Whether adding `conversations` and `chars` is checked against a cap at all."""
    return bool(quota.conversations and conversations > 0) or bool(quota.chars and chars > 0)


def refuse_past(quota: Quota, have_conv: int, have_chars: int, *, conversations: int = 0,
                chars: int = 0) -> None:
    """Raise if adding `conversations` and `chars` to what the user has passes a cap."""
    if quota.conversations and conversations > 0 \
            and have_conv + conversations > quota.conversations:
        raise TooManyConversations(
            f"you already keep {have_conv:,} conversations, the most one account may keep "
            f"({quota.conversations:,}); delete some to start new ones")
    if quota.chars and chars > 0 and have_chars + chars > quota.chars:
        raise StorageQuotaExceeded(
            f"this would take your stored text past your quota of {quota.chars:,} characters "
            f"({have_chars:,} used); delete some conversations to make room")


def too_many_memories(have: int, max_count: int) -> TooManyMemories:
    """The error of a memory past memories.max_per_user."""
    return TooManyMemories(
        f"you already keep {have:,} memories, the most one account may keep ({max_count:,}); "
        "delete some you no longer need to add more")


def free(running: str | None, since: str | None, turn: TurnMark | None) -> None:
    """ConversationBusy if another turn's mark on the conversation still holds (a reply is
    being generated there: a turn now would hang from a question still unanswered)."""
    if turn is not None and running is not None and running != turn.id \
            and (since or "") >= turn.stale_before:
        raise ConversationBusy("a reply is being generated in this conversation")
