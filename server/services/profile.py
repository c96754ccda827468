"""Each user's account settings and long-term memories, kept in memory for their turns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache

from ..storage import MemoryStore
from .memory import approx_tokens

MEMORY_HEADING = "Things the user asked you to remember:"


@dataclass(frozen=True, slots=True)
class Profile:
    """What every turn of a user needs besides its conversation."""

    settings: dict[str, Any]  # the account's own settings ({}: none); never mutated
    memories: tuple[str, ...]  # enabled, active memories, newest first
    block: str  # those that fit the budget, as the system prompt carries them ("": none)


def memory_block(memories: tuple[str, ...] | list[str], budget: int) -> str:
    """The memories that fit `budget` tokens, newest first (older ones are left out), one a
    line under a short heading; "" when none fits."""
    lines: list[str] = []
    for content in memories:
        budget -= approx_tokens(content)
        if budget < 0:
            break
        lines.append(f"- {content}")
    return "\n".join([MEMORY_HEADING, *lines]) if lines else ""


class Profiles:
    """A bounded cache of profiles (least recently used go first): a turn reads its user's
    profile from the database only after that user changed it through the services."""

    def __init__(self, store: MemoryStore, budget: int, size: int) -> None:
        self._store = store
        self._budget = budget
        self._cache: LRUCache[int, Profile] = LRUCache(size)
        # Bumped by every forget(): a load that read before a change must not cache it.
        self._changes = 0
        self.hits = 0
        self.misses = 0

    async def get(self, user_id: int) -> Profile:
        """The user's profile, from the cache when it holds it."""
        profile = self._cache.get(user_id)
        if profile is not None:
            self.hits += 1
            return profile
        self.misses += 1
        changes = self._changes
        settings, memories = await self._store.profile(user_id)
        profile = Profile(settings, tuple(memories), memory_block(memories, self._budget))
        if changes == self._changes:
            self._cache[user_id] = profile
        return profile

    def forget(self, user_id: int) -> None:
        """Drop the user's profile: they changed it (or the account is gone)."""
        self._changes += 1
        self._cache.pop(user_id, None)
