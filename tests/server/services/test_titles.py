"""server/services/titles.py: what the model is asked, and how its answer becomes a title."""

from __future__ import annotations

import pytest

from server.services.titles import MESSAGE_CHARS, REPLY_CHARS, clean_title, title_prompt


@pytest.mark.parametrize(("answer", "title"), [
    ("Lisbon trip with kids", "Lisbon trip with kids"),
    ('"Lisbon Trip Planning"', "Lisbon Trip Planning"),
    ("Title: **Lisbon** trip.", "Lisbon trip"),
    ("**Title:** “Budget review”", "Budget review"),
    ("# Weekly plan\nMore words the model added", "Weekly plan"),
    ("\n\n  Spanish verbs  \n", "Spanish verbs"),
    ("<think>The user wants a title.</think>\nGarden layout", "Garden layout"),
    ("```\nCode title\n```", "Code title"),
    ("A title far longer than anyone would want to read in a narrow sidebar list",
     "A title far longer than anyone would want to read in a…"),
])
def test_an_answer_becomes_a_clean_title(answer: str, title: str) -> None:
    assert clean_title(answer) == title


@pytest.mark.parametrize("answer", [None, "", "  \n ", '""', "**", "<think>still thinking",
                                    "Title:"])
def test_an_answer_with_nothing_usable_keeps_the_old_title(answer: str | None) -> None:
    assert clean_title(answer) is None


def test_the_prompt_trims_both_ends_of_the_conversation() -> None:
    system, user = title_prompt("q" * 5000, "z" * 5000)
    assert system["role"] == "system" and user["role"] == "user"
    content = user["content"]
    assert content.count("q") == MESSAGE_CHARS and content.count("z") == REPLY_CHARS
    assert len(content) < MESSAGE_CHARS + REPLY_CHARS + 200
    assert content.startswith("User: q") and content.endswith("for this conversation.")
