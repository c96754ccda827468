"""Conversation titles carry no bidi controls or other invisible characters (label spoofing)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from server.services.chat import title_from
from server.services.text import visible

SPOOF = "invoice_\u202egnp.exe"  # shows as "invoice_exe.png"
HIDDEN = [
    "\u202a", "\u202b", "\u202c", "\u202d", "\u202e",  # embeddings and overrides
    "\u2066", "\u2067", "\u2068", "\u2069",  # isolates
    "\u200e", "\u200f", "\u061c",  # marks
    "\u200b", "\u2060", "\ufeff", "\u00ad", "\u3164", "\U000e0041",  # zero-width, tags, fillers
]


@pytest.mark.parametrize("char", HIDDEN)
def test_visible_drops_each_invisible_character(char: str) -> None:
    assert visible(f"a{char}b") == "ab"


def test_visible_keeps_what_scripts_and_emoji_need() -> None:
    for text in ("👩\u200d💻 work", "می\u200cخواهم", "❤\ufe0f", "שלום עולם", "Ünïcödé"):
        assert visible(text) == text


@pytest.mark.parametrize(("message", "title"), [
    ("# Heading", "Heading"),
    ("### A plan for **Monday**\nmore", "A plan for Monday"),
    ("> quoted *words* here", "quoted words here"),
    ("- item one", "item one"),
    ("1. first step", "first step"),
    ("```python\nprint('hi')\n```", "print('hi')"),
    ("use `git rebase -i` now", "use git rebase -i now"),
    ("2*3 = 6 and a_b_c", "2*3 = 6 and a_b_c"),  # not emphasis: kept
    ("#hashtag is not a heading", "#hashtag is not a heading"),
    ("```\n```", "New chat"),
])
def test_a_title_shows_the_words_not_the_markdown(message: str, title: str) -> None:
    assert title_from(message) == title


def test_a_title_from_the_first_message_is_cleaned_too() -> None:
    assert title_from(f"{SPOOF}\nplease look") == "invoice_gnp.exe"


async def test_create_and_rename_strip_bidi_controls(http: aiohttp.ClientSession,
                                                     register: Any) -> None:
    user = await register()
    async with http.post("/api/conversations", json={"title": SPOOF},
                         headers=user.headers) as resp:
        assert resp.status == 201
        conv = await resp.json()
    assert conv["title"] == "invoice_gnp.exe"
    renamed = "".join(HIDDEN) + " plans \u202e2026"
    async with http.patch(f"/api/conversations/{conv['id']}", json={"title": renamed},
                          headers=user.headers) as resp:
        assert resp.status == 200
        assert (await resp.json())["title"] == "plans 2026"
    async with http.get(f"/api/conversations/{conv['id']}", headers=user.headers) as resp:
        assert (await resp.json())["title"] == "plans 2026"


async def test_a_title_of_only_invisible_characters_is_new_chat(http: aiohttp.ClientSession,
                                                                register: Any) -> None:
    user = await register()
    async with http.post("/api/conversations", json={"title": "\u202e\u200b"},
                         headers=user.headers) as resp:
        assert resp.status == 201
        conv = await resp.json()
    assert conv["title"] == "New chat"
    async with http.patch(f"/api/conversations/{conv['id']}", json={"title": " \u2066\x01 "},
                          headers=user.headers) as resp:
        assert resp.status == 200
        assert (await resp.json())["title"] == "New chat"
