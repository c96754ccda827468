"""Long-term memories: short facts a user keeps ("I write Python 3.12"), added to the system
prompt of each of their turns. Not `memory.py`, which budgets one conversation's history."""

from __future__ import annotations

from ..config import MemoriesConfig
from ..storage import MemoryStore
from ..storage.rows import MemoryRow
from .caps import Caps, Overrides
from .profile import Profiles
from .text import visible

MAX_MEMORY_CHARS = 500


class InvalidMemory(ValueError):
    """A memory's text is empty or too long once cleaned."""


def clean_memory(content: str) -> str:
    """The text as it is kept: one line, without invisible characters or runs of spaces;
    InvalidMemory if nothing is left or it is longer than MAX_MEMORY_CHARS."""
    text = " ".join(visible(content).split())
    if not 1 <= len(text) <= MAX_MEMORY_CHARS:
        raise InvalidMemory(f"'content' must be 1 to {MAX_MEMORY_CHARS} characters "
                            "(spaces at either end and invisible characters aside)")
    return text


class MemoryService:
    """A user's memories; every write drops the user's cached profile, so their next turn
    sees it."""

    def __init__(self, store: MemoryStore, profiles: Profiles, caps: Caps,
                 config: MemoriesConfig) -> None:
        self._store = store
        self._profiles = profiles
        self._caps = caps
        self._config = config

    async def all(self, user_id: int) -> list[MemoryRow]:
        """Every memory of the user (active and proposed), newest first."""
        return await self._store.all(user_id)

    async def add(self, user_id: int, content: str, limits: Overrides = None) -> MemoryRow:
        """A new active, enabled memory (TooManyMemories past `max_per_user`)."""
        text = clean_memory(content)
        try:
            return await self._store.add(user_id, text, self._config.max_per_user,
                                         self._caps.quota(limits))
        finally:
            self._profiles.forget(user_id)

    async def update(self, user_id: int, memory_id: int, content: str | None = None,
                     enabled: bool | None = None, limits: Overrides = None) -> MemoryRow:
        """Change a memory's text and/or switch it on or off (MemoryNotFound)."""
        text = None if content is None else clean_memory(content)
        try:
            return await self._store.update(user_id, memory_id, content=text, enabled=enabled,
                                            quota=self._caps.quota(limits))
        finally:
            self._profiles.forget(user_id)

    async def accept(self, user_id: int, memory_id: int) -> MemoryRow:
        """A proposed memory becomes active (an active one stays so)."""
        try:
            return await self._store.update(user_id, memory_id, accept=True)
        finally:
            self._profiles.forget(user_id)

    async def delete(self, user_id: int, memory_id: int) -> None:
        """Delete a memory (rejecting a proposal is deleting it)."""
        try:
            await self._store.delete(user_id, memory_id)
        finally:
            self._profiles.forget(user_id)

    async def propose(self, user_id: int, contents: list[str],
                      limits: Overrides = None) -> list[MemoryRow]:
        """Store suggested memories as 'proposed' (never sent to the model until the user
        accepts them): unusable texts and ones the user keeps already are skipped, and no
        more than the caps allow are kept. The rows stored."""
        texts: list[str] = []
        for content in contents[:self._config.max_per_user]:
            try:
                texts.append(clean_memory(content))
            except InvalidMemory:
                continue
        if not texts:
            return []
        try:
            return await self._store.propose(user_id, texts, self._config.max_per_user,
                                             self._caps.quota(limits))
        finally:
            self._profiles.forget(user_id)  # the list changed, though no prompt did
