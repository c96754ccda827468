"""The memory manager: stores messages and builds each prompt's history within a budget."""

from __future__ import annotations

from ..config import MemoryConfig
from ..storage import NO_QUOTA, MessageStore, Quota
from ..storage.rows import ConversationUse, HistoryRows, MessageRow

_OVERHEAD_TOKENS = 4  # per message: role and separators in the chat template


def approx_tokens(text: str) -> int:
    """A cheap token estimate (about four characters a token), good enough for a budget."""
    return _OVERHEAD_TOKENS + (len(text) + 3) // 4


class MemoryManager:
    """Appends messages and returns a conversation's recent history, oldest first."""

    def __init__(self, messages: MessageStore, config: MemoryConfig) -> None:
        self._messages = messages
        self._config = config

    async def append(self, conversation_id: int, role: str, content: str,
                     status: str = "complete", usage: str | None = None,
                     model: str | None = None, error: str | None = None,
                     parent_id: int | None = None) -> MessageRow:
        """Store one message in a conversation, under the message it answers."""
        return await self._messages.add(conversation_id, role, content, status, usage, model,
                                        error, parent_id)

    async def add_user_message(self, user_id: int, conversation_id: int | None, content: str,
                               title: str, quota: Quota = NO_QUOTA, model: str | None = None
                               ) -> tuple[int, MessageRow, list[dict[str, str]], ConversationUse]:
        """Store the user's message (within their caps) and get the history before it and
        the conversation's model (`model`, if given, becomes it), in the same transaction."""
        conv, stored, rows, used = await self._messages.add_user_message(
            user_id, conversation_id, content, title, self._config.max_history_messages, quota,
            model)
        return conv, stored, self.within_budget(rows), used

    async def edit(self, user_id: int, conversation_id: int, message_id: int, content: str,
                   quota: Quota = NO_QUOTA, model: str | None = None
                   ) -> tuple[MessageRow, list[dict[str, str]], ConversationUse]:
        """Store a new version of a user's message as a new branch (within the user's caps);
        return it, the history before it and the conversation's model."""
        stored, rows, used = await self._messages.edit(
            user_id, conversation_id, message_id, content, self._config.max_history_messages,
            quota, model)
        return stored, self.within_budget(rows), used

    async def regenerate(self, user_id: int, conversation_id: int, message_id: int | None,
                         model: str | None = None
                         ) -> tuple[MessageRow, list[dict[str, str]], ConversationUse]:
        """Take a user's message up again (earlier replies stay as alternatives); return it,
        the history before it and the conversation's model."""
        stored, rows, used = await self._messages.regenerate(
            user_id, conversation_id, message_id, self._config.max_history_messages, model)
        return stored, self.within_budget(rows), used

    def within_budget(self, rows: HistoryRows) -> list[dict[str, str]]:
        """Newest-first rows cut to the token budget, returned oldest first."""
        picked: list[dict[str, str]] = []
        budget = self._config.max_history_tokens
        for _, role, content in rows[:self._config.max_history_messages]:
            budget -= approx_tokens(content)
            if budget < 0:
                break
            picked.append({"role": role, "content": content})
        picked.reverse()
        return picked

    def prompt(self, history: list[dict[str, str]], message: str,
               system_prompt: str | None = None) -> list[dict[str, str]]:
        """The messages sent upstream: system prompt (the model's own, if it has one), history,
        then the new message."""
        text = self._config.system_prompt if system_prompt is None else system_prompt
        system = [{"role": "system", "content": text}] if text else []
        return [*system, *history, {"role": "user", "content": message}]
