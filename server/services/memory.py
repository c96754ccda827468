"""The memory manager: stores messages and builds each prompt's history within a budget."""

from __future__ import annotations

from typing import Any

from ..config import MemoryConfig
from ..storage import NO_QUOTA, MessageStore, Quota, TurnMark
from ..storage.rows import SUMMARY, ConversationUse, HistoryRows, MessageRow

_OVERHEAD_TOKENS = 4  # per message: role and separators in the chat template
SUMMARY_HEADING = "Summary of the earlier part of this conversation:"


class History(list[dict[str, str]]):
    """A prompt's history, oldest first (a summary of older turns first, role "summary");
    `full`: older messages were left out for the budget, so a summary would help."""

    full: bool = False


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
                     parent_id: int | None = None, turn: str | None = None) -> MessageRow:
        """Store one message in a conversation, under the message it answers (a shared
        `turn`'s reply once: TurnStored after that)."""
        return await self._messages.add(conversation_id, role, content, status, usage, model,
                                        error, parent_id, turn)

    async def add_user_message(self, user_id: int, conversation_id: int | None, content: str,
                               title: str, quota: Quota = NO_QUOTA, model: str | None = None,
                               turn: TurnMark | None = None,
                               settings: dict[str, Any] | None = None
                               ) -> tuple[int, MessageRow, History, ConversationUse]:
        """Store the user's message (within their caps; `turn` marked on the conversation)
        and get the history before it and the conversation's model (`model`, if given,
        becomes it), in the same transaction. A new conversation is made with `settings`."""
        conv, stored, rows, used = await self._messages.add_user_message(
            user_id, conversation_id, content, title, self._config.max_history_messages, quota,
            model, turn, settings)
        return conv, stored, self.within_budget(rows), used

    async def edit(self, user_id: int, conversation_id: int, message_id: int, content: str,
                   quota: Quota = NO_QUOTA, model: str | None = None,
                   turn: TurnMark | None = None
                   ) -> tuple[MessageRow, History, ConversationUse]:
        """Store a new version of a user's message as a new branch (within the user's caps);
        return it, the history before it and the conversation's model."""
        stored, rows, used = await self._messages.edit(
            user_id, conversation_id, message_id, content, self._config.max_history_messages,
            quota, model, turn)
        return stored, self.within_budget(rows), used

    async def regenerate(self, user_id: int, conversation_id: int, message_id: int | None,
                         model: str | None = None, turn: TurnMark | None = None
                         ) -> tuple[MessageRow, History, ConversationUse]:
        """Take a user's message up again (earlier replies stay as alternatives); return it,
        the history before it and the conversation's model."""
        stored, rows, used = await self._messages.regenerate(
            user_id, conversation_id, message_id, self._config.max_history_messages, model,
            turn)
        return stored, self.within_budget(rows), used

    def within_budget(self, rows: HistoryRows) -> History:
        """Newest-first rows cut to the budget, returned oldest first. A summary (the oldest
        row, if any) is kept first, so the budget's rest goes to the turns after it."""
        summary = rows[-1] if rows and rows[-1][1] == SUMMARY else None
        recent = rows[:-1] if summary else rows
        picked = History()
        budget = self._config.max_history_tokens
        if summary is not None:
            budget -= approx_tokens(summary[2])
            if budget < 0:  # a summary longer than the whole budget: the recent turns win
                summary, budget = None, self._config.max_history_tokens
        limit = self._config.max_history_messages
        for _, role, content in recent[:limit]:
            budget -= approx_tokens(content)
            if budget < 0:
                picked.full = True
                break
            picked.append({"role": role, "content": content})
        picked.full = picked.full or len(recent) >= limit
        if summary is not None:
            picked.append({"role": SUMMARY, "content": summary[2]})
        picked.reverse()
        return picked

    def prompt(self, history: list[dict[str, str]], message: str,
               system_prompt: str | None = None) -> list[dict[str, str]]:
        """The messages sent upstream: system prompt (the model's own, if it has one) with the
        summary of older turns, the history, then the new message."""
        text = self._config.system_prompt if system_prompt is None else system_prompt
        if history and history[0]["role"] == SUMMARY:
            # One system message: some chat templates refuse a second one, or one mid-way.
            summary = f"{SUMMARY_HEADING}\n{history[0]['content']}"
            text = f"{text}\n\n{summary}" if text else summary
            history = history[1:]
        system = [{"role": "system", "content": text}] if text else []
        return [*system, *history, {"role": "user", "content": message}]
