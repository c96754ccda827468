"""Memory suggestions: after a turn, a background job may pick durable facts from what the
user said; they are stored as proposals that wait for the user (nothing is remembered
silently). Off unless `memories.suggestions` is on."""

from __future__ import annotations

import logging
import re

from ..storage import StorageError
from ..storage.rows import MessageRow
from .background import BackgroundService, FollowUp
from .memories import MemoryService
from .turns import Turn

log = logging.getLogger(__name__)

MIN_MESSAGE_CHARS = 12  # "thanks!" tells nothing worth keeping: no job for it
MAX_MESSAGE_CHARS = 4_000  # of the user's message sent
MAX_SUGGESTIONS = 3  # per turn
MAX_SUGGESTION_CHARS = 200
MAX_TOKENS = 120
NONE = "NONE"
SYSTEM = ("You keep long-term notes about a user. From the user's message below, write the "
          "facts worth remembering for future conversations: stable preferences, their "
          "background, tools and languages they use, how they want answers. One short "
          f"sentence per line, at most {MAX_SUGGESTIONS}, no numbering. Leave out anything "
          f"about this conversation only. If there is nothing, answer {NONE}.")
_BULLET = re.compile(r"^\s*(?:[-*•]|\d{1,2}[.)])\s*")


def suggestions_from(answer: str | None) -> list[str]:
    """The model's answer as at most MAX_SUGGESTIONS short facts (bullets and quotes off)."""
    facts: list[str] = []
    for raw in (answer or "").splitlines():
        line = _BULLET.sub("", raw).strip().strip("\"'“”").strip()
        if not line or line.upper().rstrip(".") == NONE or len(line) > MAX_SUGGESTION_CHARS:
            continue
        facts.append(line)
        if len(facts) == MAX_SUGGESTIONS:
            break
    return facts


class SuggestionService(FollowUp):
    """Proposes memories from users' messages through low-priority background jobs."""

    def __init__(self, background: BackgroundService, memories: MemoryService,
                 enabled: bool = False) -> None:
        super().__init__()
        self._background = background
        self._memories = memories
        self._enabled = enabled
        self._busy: set[int] = set()  # users with a suggestion job: one at a time each

    def after_reply(self, turn: Turn, reply: MessageRow) -> None:
        """A turn's reply was stored complete: look for facts in the user's message, in the
        background. Never waits."""
        message = turn.user_message["content"]
        if not self._enabled or len(message.strip()) < MIN_MESSAGE_CHARS \
                or turn.user_id in self._busy:
            return
        self._busy.add(turn.user_id)
        self.spawn(self._suggest(turn.user_id, turn.job.model, message), "memory-suggestion")

    async def _suggest(self, user_id: int, model: str, message: str) -> None:
        try:
            # The user's own words are the user message, alone: instructions stay in the system
            # message, where a message cannot pose as them.
            answer = await self._background.submit(
                "memory", user_id, model,
                [{"role": "system", "content": SYSTEM},
                 {"role": "user", "content": message[:MAX_MESSAGE_CHARS]}], MAX_TOKENS)
            facts = suggestions_from(answer)
            if facts:
                await self._memories.propose(user_id, facts)
        except StorageError:
            pass  # the account went, a cap was reached, or the database is busy: no proposal
        except Exception:
            log.exception("memory suggestions for user %d failed", user_id)
        finally:
            self._busy.discard(user_id)

