"""Export and import of conversations: chatgate's JSON, Markdown, JSON Lines of everything."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import orjson

from ..storage import ConversationStore, OverQuota, StorageQuotaExceeded, TransferStore
from ..storage.rows import ConversationRow, MessageRow
from .branches import shown
from .caps import Caps, Overrides
from .importers import UnknownFormat, chatgate_json, parse

EXPORT_PAGE = 20  # conversations read at once while streaming everything
IMPORT_CHUNK = 32  # conversations queued for the writer at once (each its own savepoint)
_SLUG = re.compile(r"[^a-z0-9]+")


class ImportUnreadable(ValueError):
    """An import body in no known format (the message says which formats are known)."""


@dataclass(frozen=True, slots=True)
class Download:
    """A file to hand to the browser."""

    filename: str
    content_type: str
    body: bytes


def filename(conversation: ConversationRow, ext: str) -> str:
    """A filename safe in any header and file system: ASCII letters, digits and dashes."""
    slug = _SLUG.sub("-", conversation["title"].lower()).strip("-")[:40].strip("-")
    return f"chatgate-{conversation['id']}{'-' + slug if slug else ''}.{ext}"


def account_filename(username: str) -> str:
    """The name of an account's whole export, as safe as `filename`."""
    slug = _SLUG.sub("-", username.lower()).strip("-")[:40].strip("-")
    return f"chatgate-{slug or 'export'}.jsonl"


def markdown(conversation: ConversationRow, messages: list[MessageRow]) -> str:
    """The conversation as Markdown: its title, then each message of the branch on show
    under its role."""
    lines = [f"# {conversation['title']}", ""]
    for m in shown(messages, conversation["leaf_id"]):
        role = m["role"].capitalize()
        heading = f"## {role}" + (f" ({m['model']})" if m.get("model") else "")
        lines += [heading, "", m["content"], ""]
    return "\n".join(lines)


class TransferService:
    """A user's conversations out (one or all) and in (chatgate's or ChatGPT's files)."""

    def __init__(self, transfer: TransferStore, conversations: ConversationStore,
                 caps: Caps) -> None:
        self._transfer = transfer
        self._conversations = conversations
        self._caps = caps

    async def export_one(self, user_id: int, conversation_id: int, fmt: str) -> Download:
        """One conversation as chatgate's JSON ("json") or Markdown ("md") (NotFound)."""
        conv, msgs = await self._conversations.get(user_id, conversation_id)
        if fmt == "md":
            return Download(filename(conv, "md"), "text/markdown",
                            markdown(conv, msgs).encode())
        return Download(filename(conv, "json"), "application/json",
                        orjson.dumps(chatgate_json({**conv, "messages": msgs}),
                                     option=orjson.OPT_INDENT_2))

    async def export_all(self, user_id: int) -> AsyncGenerator[bytes, None]:
        """Every conversation as JSON Lines, a page at a time (never all in memory)."""
        after = 0
        while True:
            page = await self._transfer.export_page(user_id, after, EXPORT_PAGE)
            if not page:
                return
            yield b"".join(orjson.dumps(chatgate_json({**c, "messages": m})) + b"\n"
                           for c, m in page)
            after = page[-1][0]["id"]

    async def import_body(self, user_id: int, raw: bytes,
                          limits: Overrides = None) -> dict[str, list[dict[str, Any]]]:
        """Store each conversation of an import on its own, within the user's caps; what
        was imported and what was refused, with why (ImportUnreadable: nothing readable)."""
        try:
            items = await asyncio.to_thread(parse, raw)  # megabytes of JSON: off the loop
        except UnknownFormat as err:
            raise ImportUnreadable(str(err)) from err
        quota = self._caps.quota(limits)
        imported: list[dict[str, Any]] = []
        rejected: list[dict[str, Any]] = []
        readable = [i for i in items if i.conversation is not None]
        for i in items:
            if i.conversation is None:
                rejected.append({"index": i.index, "title": i.title, "error": {
                    "code": "invalid_conversation", "message": i.error}})
        for start in range(0, len(readable), IMPORT_CHUNK):
            chunk = readable[start:start + IMPORT_CHUNK]
            results = await asyncio.gather(
                *(self._transfer.import_one(user_id, i.conversation, quota)
                  for i in chunk if i.conversation is not None), return_exceptions=True)
            for item, result in zip(chunk, results, strict=True):
                if isinstance(result, OverQuota):
                    code = ("storage_quota_exceeded" if isinstance(result, StorageQuotaExceeded)
                            else "too_many_conversations")
                    rejected.append({"index": item.index, "title": item.title,
                                     "error": {"code": code, "message": str(result)}})
                elif isinstance(result, BaseException):
                    raise result
                else:
                    imported.append({"id": result["id"], "title": result["title"]})
        rejected.sort(key=lambda r: int(r["index"]))
        return {"imported": imported, "rejected": rejected}
