"""Summaries of older turns: when a turn's history had to leave older turns out, they are
summarised by a background job after its reply, kept on the last message covered, and sent
(in the system message) ahead of the recent turns from then on."""

from __future__ import annotations

import logging

from ..config import MemoryConfig
from ..storage import StorageError, SummaryStore
from ..storage.rows import SUMMARY, HistoryRows, MessageRow
from .background import BackgroundService, FollowUp
from .memory import approx_tokens
from .turns import Turn

log = logging.getLogger(__name__)

MAX_INPUT_CHARS = 24_000  # of conversation sent to be summarised (about 6,000 tokens)
MAX_MESSAGE_CHARS = 4_000  # of one message in it
READ_LIMIT = 400  # messages read back to the last summary at most
SYSTEM = ("You summarise conversations so that they can be continued without their full text. "
          "Write a concise summary in the conversation's language: what the user asked and "
          "told about themselves, decisions, names, numbers, code identifiers and open "
          "questions. No preamble, no Markdown headings.")


def split_point(rows: HistoryRows, memory: MemoryConfig) -> int | None:
    """Where to summarise up to, in newest-first `rows` (the path back to the last summary):
    the index of the newest message that the recent turns leave out when they keep half the
    history budget (tokens and messages), so several turns pass before the next summary."""
    budget = memory.max_history_tokens // 2
    keep = max(1, memory.max_history_messages // 2)
    for index, (_, role, content) in enumerate(rows):
        if role == SUMMARY:
            return None  # everything older is summarised already
        budget -= approx_tokens(content)
        if index >= keep or budget < 0:
            return index
    return None


def summary_prompt(rows: HistoryRows, max_tokens: int) -> list[dict[str, str]]:
    """What the model is asked: the earlier summary (if any) and the turns after it, oldest
    first, cut to MAX_INPUT_CHARS from the newest end."""
    earlier = rows[-1][2] if rows and rows[-1][1] == SUMMARY else None
    turns = [r for r in rows if r[1] != SUMMARY]
    parts: list[str] = []
    size = 0
    for _, role, content in turns:  # newest first: the newest are kept if something goes
        text = content if len(content) <= MAX_MESSAGE_CHARS else \
            content[:MAX_MESSAGE_CHARS] + " […]"
        size += len(text)
        if size > MAX_INPUT_CHARS and parts:
            parts.append("[…earlier messages left out…]")
            break
        parts.append(f"{'User' if role == 'user' else 'Assistant'}: {text}")
    parts.reverse()
    body = "\n\n".join(parts)
    if earlier is not None:
        body = f"Summary of what came before:\n{earlier}\n\nThen:\n{body}"
    words = max(30, int(max_tokens * 0.6))
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"{body}\n\nSummarise the conversation above in at "
                                        f"most {words} words."}]


class SummaryService(FollowUp):
    """Asks for a summary after a reply whose prompt left older turns out, and keeps it."""

    def __init__(self, background: BackgroundService, summaries: SummaryStore,
                 memory: MemoryConfig, max_tokens: int, enabled: bool = True) -> None:
        super().__init__()
        self._background = background
        self._summaries = summaries
        self._memory = memory
        self._max_tokens = max_tokens
        self._enabled = enabled
        self._busy: set[int] = set()  # conversations with a summary being made

    def after_reply(self, turn: Turn, reply: MessageRow) -> None:
        """A reply was stored complete: if its prompt left older turns out, summarise them in
        the background (one conversation at a time). Never waits."""
        if not self._enabled or not turn.history_full or turn.conversation_id in self._busy:
            return
        self._busy.add(turn.conversation_id)
        self.spawn(self._summarise(
            turn.user_id, turn.conversation_id, reply["id"], turn.job.model), "summary")

    async def _summarise(self, user_id: int, conversation_id: int, reply_id: int,
                         model: str) -> None:
        try:
            rows = await self._summaries.since_last(user_id, conversation_id, reply_id,
                                                    READ_LIMIT)
            at = split_point(rows, self._memory)
            if at is None:
                return
            covered = rows[at:]
            answer = await self._background.submit(
                "summary", user_id, model, summary_prompt(covered, self._max_tokens),
                self._max_tokens)
            text = (answer or "").strip()
            if text:
                await self._summaries.save(covered[0][0], text, model or None)
        except StorageError:
            pass  # the conversation went, or the database is busy: the next turn tries again
        except Exception:
            log.exception("the summary of conversation %d was not made", conversation_id)
        finally:
            self._busy.discard(conversation_id)

