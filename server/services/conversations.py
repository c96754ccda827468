"""Conversations and search: listing, opening, renaming, deleting, finding."""

from __future__ import annotations

from typing import Any

from ..storage import BranchStore, ConversationStore, SearchStore
from ..storage.rows import ConversationRow, SearchHit
from .branches import shown
from .caps import Caps, Overrides
from .render import Renderer

MAX_QUERY_CHARS = 500


class ConversationService:
    """A user's conversations; every call is scoped to that user by the storage."""

    def __init__(self, conversations: ConversationStore, search: SearchStore,
                 caps: Caps, renderer: Renderer, branches: BranchStore) -> None:
        self._conversations = conversations
        self._branches = branches
        self._search = search
        self._caps = caps
        self._renderer = renderer

    async def page(self, user_id: int, limit: int,
                   cursor: str | None) -> tuple[list[ConversationRow], str | None]:
        """A page of conversations, newest activity first, and the next page's cursor."""
        return await self._conversations.page(user_id, limit, cursor)

    async def create(self, user_id: int, title: str,
                     limits: Overrides = None, titled: bool = False) -> ConversationRow:
        """An empty conversation, within the user's creation rate and storage caps
        (`titled`: the user gave the title, so no generated one replaces it)."""
        await self._caps.new_conversation(user_id, limits)
        return await self._conversations.create(user_id, title, self._caps.quota(limits),
                                                titled)

    async def get(self, user_id: int, conversation_id: int, html: bool) -> dict[str, Any]:
        """A conversation with the messages of its branch on show, oldest first (each with its
        alternatives' ids); replies rendered when asked.

        A reply the renderer declined (too long, over the request's budget, busy) has
        `html: null`: the caller shows its Markdown source as text.
        """
        conv, every = await self._conversations.get(user_id, conversation_id)
        msgs = shown(every, conv["leaf_id"])
        if html:
            replies = [m for m in msgs if m["role"] == "assistant"]
            rendered_all = await self._renderer.html(
                user_id, [(m["id"], m["content"]) for m in replies])
            for message, rendered in zip(replies, rendered_all, strict=True):
                message["html"] = rendered  # type: ignore[typeddict-unknown-key]
        return {**conv, "messages": msgs}

    async def show_branch(self, user_id: int, conversation_id: int, message_id: int) -> None:
        """Show the branch through a message (its newest leaf becomes the active one)."""
        await self._branches.switch(user_id, conversation_id, message_id)

    async def delete_branch(self, user_id: int, conversation_id: int, message_id: int) -> int:
        """Delete a message and everything under it (the active branch moves to the newest
        one left beside it); return how many messages went."""
        return await self._branches.delete(user_id, conversation_id, message_id)

    async def rename(self, user_id: int, conversation_id: int, title: str,
                     limits: Overrides = None) -> ConversationRow:
        """Change the title (a longer one must fit the user's stored-text cap)."""
        return await self._conversations.rename(user_id, conversation_id, title,
                                                self._caps.quota(limits))

    async def configure(self, user_id: int, conversation_id: int, changes: dict[str, Any],
                        limits: Overrides = None) -> ConversationRow:
        """Change some of the conversation's own settings (a None value removes one); its
        turns use them from the next one on."""
        return await self._conversations.configure(user_id, conversation_id, changes,
                                                   self._caps.quota(limits))

    async def delete(self, user_id: int, conversation_id: int) -> None:
        """Delete a conversation and its messages."""
        await self._conversations.delete(user_id, conversation_id)

    async def search(self, user_id: int, query: str, limit: int) -> list[SearchHit]:
        """Full-text search over the user's own messages, best match first."""
        return await self._search.search(user_id, query[:MAX_QUERY_CHARS], limit)
