"""Generated titles: after a conversation's first complete reply, its model is asked (as a
background job) for a short title, which replaces the first-line one unless the user has
set a title meanwhile."""

from __future__ import annotations

import logging
import re

from ..storage import ConversationStore, StorageError
from ..storage.rows import MessageRow
from .background import BackgroundService, FollowUp
from .chat import title_from
from .turns import Turn

log = logging.getLogger(__name__)

MAX_TITLE_CHARS = 60
MAX_TITLE_TOKENS = 24  # a title of six words, with room for a model that adds a little
MESSAGE_CHARS = 1000  # of the first user message sent to ask for a title
REPLY_CHARS = 500  # of the reply's start
SYSTEM = ("You write titles for chat conversations. Answer with the title only: at most six "
          "words saying what the conversation is about, in its language, with no quotes, no "
          "Markdown and no full stop.")
ASK = "Write a title of at most six words for this conversation."
_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL | re.IGNORECASE)
_LABEL = re.compile(r"^\s*(?:\*\*)?title(?:\*\*)?\s*:\s*", re.IGNORECASE)
_QUOTES = "\"'`“”‘’„«»‹›「」"


def title_prompt(message: str, reply: str) -> list[dict[str, str]]:
    """What the model is asked: the conversation's start (both ends trimmed), then the ask."""
    excerpt = (f"User: {_cut(message, MESSAGE_CHARS)}\n\n"
               f"Assistant: {_cut(reply, REPLY_CHARS)}\n\n{ASK}")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": excerpt}]


def clean_title(answer: str | None) -> str | None:
    """The model's answer as a title: its first line of text without a "Title:" label,
    quotes, Markdown marks or a full stop, at most 60 characters; None if nothing is left."""
    text = _THINK.sub("", answer or "")  # a reasoning model's thoughts are not the answer
    for raw in text.splitlines():
        line = _LABEL.sub("", raw).strip().strip(_QUOTES).strip()
        if line and not line.startswith(("```", "~~~")):
            break
    else:
        return None
    title = title_from(line, MAX_TITLE_CHARS).strip(_QUOTES + " ").rstrip(".:;,").strip()
    if not title or (title == "New chat" and "new chat" not in line.lower()):
        return None  # only marks: title_from's placeholder, not an answer
    return title


def _cut(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit].rstrip() + "…"


class TitleService(FollowUp):
    """Asks for a conversation's title after its first reply, and stores it if still wanted."""

    def __init__(self, background: BackgroundService, conversations: ConversationStore,
                 enabled: bool = True) -> None:
        super().__init__()
        self._background = background
        self._conversations = conversations
        self._enabled = enabled

    def after_reply(self, turn: Turn, reply: MessageRow) -> None:
        """A turn's reply was stored complete: on a conversation's first exchange (its first
        message, sent as new), ask for a title in the background. Never waits."""
        # Not an edit or a regenerate of the first message either: their prompt holds no
        # reply too, but a title V12 took for automatic may be one the user chose.
        if not self._enabled or not turn.first_exchange:
            return
        self.spawn(self._title(
            turn.user_id, turn.conversation_id, turn.job.model, turn.user_message["content"],
            reply["content"]), "title")

    async def _title(self, user_id: int, conversation_id: int, model: str, message: str,
                     reply: str) -> None:
        try:
            if await self._conversations.title_source(user_id, conversation_id) \
                    != "first_line":
                return  # set by the user, or generated already: no job at all
            answer = await self._background.submit(
                "title", user_id, model, title_prompt(message, reply), MAX_TITLE_TOKENS)
            title = clean_title(answer)
            if title is not None:
                await self._conversations.set_generated_title(user_id, conversation_id,
                                                              title)
        except StorageError:
            pass  # deleted meanwhile, or the database is busy: the first-line title stays
        except Exception:
            log.exception("the title of conversation %d was not generated", conversation_id)

