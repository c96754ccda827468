"""Tests for server/services/summaries.py: where a summary ends and what the model is asked."""

from __future__ import annotations

from server.config import MemoryConfig
from server.services.summaries import MAX_INPUT_CHARS, SYSTEM, split_point, summary_prompt
from server.storage.rows import SUMMARY

ROWS = [(6, "assistant", "a3"), (5, "user", "q3"), (4, "assistant", "a2"), (3, "user", "q2"),
        (2, "assistant", "a1"), (1, "user", "q1")]


def test_the_split_keeps_half_the_message_budget() -> None:
    assert split_point(ROWS, MemoryConfig(max_history_messages=4)) == 2
    assert split_point(ROWS, MemoryConfig(max_history_messages=8)) == 4
    assert split_point(ROWS, MemoryConfig(max_history_messages=20)) is None  # all fits


def test_the_split_keeps_half_the_token_budget() -> None:
    rows = [(3, "assistant", "x" * 400), (2, "user", "y" * 400), (1, "user", "z")]
    # 104 tokens each: a budget of 300 keeps 150, so only the newest stays out of it.
    assert split_point(rows, MemoryConfig(max_history_tokens=300)) == 1


def test_nothing_to_do_when_the_split_reaches_the_last_summary() -> None:
    rows = [*ROWS[:2], (4, SUMMARY, "earlier")]
    assert split_point(rows, MemoryConfig(max_history_messages=4)) is None


def test_the_prompt_has_the_earlier_summary_then_the_turns_oldest_first() -> None:
    messages = summary_prompt([*ROWS[2:4], (2, SUMMARY, "they met")], 400)
    assert messages[0] == {"role": "system", "content": SYSTEM}
    text = messages[1]["content"]
    assert text.index("they met") < text.index("User: q2") < text.index("Assistant: a2")
    assert "at most 240 words" in text


def test_a_long_conversation_is_cut_from_its_oldest_end() -> None:
    rows = [(n, "user", f"m{n} " + "w" * 3000) for n in range(20, 0, -1)]
    text = summary_prompt(rows, 400)[1]["content"]
    assert len(text) < MAX_INPUT_CHARS + 5000
    assert "m20" in text and "m1 " not in text and "earlier messages left out" in text
