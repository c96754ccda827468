"""The memory manager: stores messages and builds each prompt's history within a budget."""

from __future__ import annotations

from .config import MemoryConfig
from .storage import Database, messages
from .storage.rows import MessageRow

_OVERHEAD_TOKENS = 4  # per message: role and separators in the chat template


def approx_tokens(text: str) -> int:
    """A cheap token estimate (about four characters a token), good enough for a budget."""
    return _OVERHEAD_TOKENS + (len(text) + 3) // 4


class MemoryManager:
    """Appends messages and returns a conversation's recent history, oldest first."""

    def __init__(self, db: Database, config: MemoryConfig) -> None:
        self._db = db
        self._config = config

    async def append(self, conversation_id: int, role: str, content: str,
                     status: str = "complete", usage: str | None = None) -> MessageRow:
        """Store one message in a conversation."""
        return await messages.add(self._db, conversation_id, role, content, status, usage)

    async def history(self, user_id: int, conversation_id: int,
                      before_id: int | None = None) -> list[dict[str, str]]:
        """Recent messages (older than `before_id`) within the count and token budget, in one read."""
        rows = await messages.recent(self._db, user_id, conversation_id,
                                     self._config.max_history_messages, before_id)
        picked: list[dict[str, str]] = []
        budget = self._config.max_history_tokens
        for _, role, content in rows:  # newest first
            budget -= approx_tokens(content)
            if budget < 0:
                break
            picked.append({"role": role, "content": content})
        picked.reverse()
        return picked

    def prompt(self, history: list[dict[str, str]], message: str) -> list[dict[str, str]]:
        """The messages sent upstream: system prompt, history, then the new message."""
        system = [{"role": "system", "content": self._config.system_prompt}] \
            if self._config.system_prompt else []
        return [*system, *history, {"role": "user", "content": message}]
