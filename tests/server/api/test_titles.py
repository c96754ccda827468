"""Conversation titles carry no bidi controls or other invisible characters (label spoofing)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from server import keys
from server.runner import Running
from server.services.chat import title_from
from server.services.text import visible
from tests.support.app import User, register_over_http, storage_of
from tests.support.sse import events
from tests.support.storage import execute
from vllm_sim import SimServer

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


# --- generated titles (a background job after the first reply) ---------------------------


async def sim_post(sim: SimServer, path: str, body: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{sim.root_url}{path}", json=body) as resp:
            assert resp.status == 200, await resp.text()


async def sim_bodies(sim: SimServer) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{sim.root_url}/sim/requests") as resp:
            return list(await resp.json())


def title_jobs(running: Running, outcome: str) -> int:
    """Title jobs that ended so (chatgate_background_jobs_total{kind="title"})."""
    return int(running.app[keys.METRICS].background.counts.get(("title", outcome), 0))


def ended(running: Running, outcome: str, n: int = 1) -> bool:
    """n title jobs ended so and nothing of theirs is still being stored: the job's end is
    counted before its title is written (a write that takes longer on PostgreSQL)."""
    return title_jobs(running, outcome) == n and not running.app[keys.TITLES]._tasks


async def until(cond: Callable[[], bool]) -> None:
    """Poll with a generous deadline (a safety net, not a timing assertion)."""
    deadline = asyncio.get_running_loop().time() + 30
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "never happened"
        await asyncio.sleep(0.02)


async def titled(custom: Any, simulator: SimServer) -> tuple[Running, User]:
    """A server that generates titles, an echoing simulator (a title is then the prompt's
    first line) and a user."""
    await sim_post(simulator, "/sim/config", {"echo": True})
    running = await custom(background={"titles": True})
    return running, await register_over_http(running.url, "titler")


async def chat(running: Running, user: User, message: str,
               conv: int | None = None) -> dict[str, Any]:
    async with aiohttp.ClientSession(running.url) as s:
        body: dict[str, Any] = {"message": message}
        if conv is not None:
            body["conversation_id"] = conv
        async with s.post("/api/chat", json=body, headers=user.headers) as resp:
            assert resp.status == 200, await resp.text()
            return dict(await resp.json())


async def conversation(running: Running, user: User, conv: int) -> dict[str, Any]:
    async with aiohttp.ClientSession(running.url) as s:
        async with s.get(f"/api/conversations/{conv}", headers=user.headers) as resp:
            assert resp.status == 200
            return dict(await resp.json())


async def test_the_first_reply_brings_a_generated_title(custom: Any,
                                                        simulator: SimServer) -> None:
    running, user = await titled(custom, simulator)
    first = await chat(running, user, "Plan a **trip** to Lisbon\nwith two kids in May")
    conv = first["conversation_id"]
    await until(lambda: ended(running, "done"))
    # The echoing model repeats the prompt: its first line, cleaned, is the title.
    assert (await conversation(running, user, conv))["title"] == "User: Plan a trip to Lisbon"
    asked = (await sim_bodies(simulator))[-1]
    assert asked["max_tokens"] <= 32 and asked["messages"][0]["role"] == "system"
    prompt = asked["messages"][-1]["content"]
    assert "with two kids in May" in prompt and first["message"]["content"][:40] in prompt
    await chat(running, user, "And in June?", conv)  # not a first reply: no other title
    assert (await conversation(running, user, conv))["title"] == "User: Plan a trip to Lisbon"
    assert await storage_of(running).conversations.title_source(user.id, conv) == "generated"


async def test_an_empty_conversation_gets_one_but_a_title_given_at_creation_is_kept(
        custom: Any, simulator: SimServer) -> None:
    running, user = await titled(custom, simulator)
    ids = []
    async with aiohttp.ClientSession(running.url) as s:
        for body in ({}, {"title": "Mine"}):
            async with s.post("/api/conversations", json=body, headers=user.headers) as resp:
                ids.append((await resp.json())["id"])
    for conv in ids:
        await chat(running, user, "hello there", conv)
    await until(lambda: ended(running, "done"))  # the one titled "Mine" asks none
    assert [(await conversation(running, user, c))["title"] for c in ids] == \
        ["User: hello there", "Mine"]


async def test_a_title_renamed_by_the_user_is_never_replaced(custom: Any,
                                                             simulator: SimServer) -> None:
    running, user = await titled(custom, simulator)
    # Renamed while the first reply streams: no title job at all.
    await sim_post(simulator, "/sim/config", {"tpot_ms": 30})
    async with aiohttp.ClientSession(running.url) as s:
        resp = await s.post("/api/chat", json={"message": "one two three four five six",
                                               "stream": True}, headers=user.headers)
        async for name, data in events(resp):
            if name == "meta":
                early = data["conversation_id"]
            if name == "message":
                async with s.patch(f"/api/conversations/{early}", json={"title": "Early"},
                                   headers=user.headers) as renamed:
                    assert renamed.status == 200
                break
        async for name, _ in events(resp):
            assert name != "error"
        resp.release()
    # Renamed after the reply, while its title job waits for the (slow) model: kept too.
    await sim_post(simulator, "/sim/config", {"tpot_ms": 1, "ttft_ms": 1500})
    late = (await chat(running, user, "a later chat"))["conversation_id"]
    async with aiohttp.ClientSession(running.url) as s:
        async with s.patch(f"/api/conversations/{late}", json={"title": "Late"},
                           headers=user.headers) as renamed:
            assert renamed.status == 200
    await until(lambda: ended(running, "done"))  # the later chat's only
    assert (await conversation(running, user, early))["title"] == "Early"
    assert (await conversation(running, user, late))["title"] == "Late"
    asked = [b["messages"][-1]["content"] for b in await sim_bodies(simulator)]
    assert sum(a.startswith("User: ") for a in asked) == 1  # none for the early one


async def test_a_failed_title_job_keeps_the_first_line_title(custom: Any,
                                                             simulator: SimServer) -> None:
    running, user = await titled(custom, simulator)
    await sim_post(simulator, "/sim/config", {"tpot_ms": 30})
    async with aiohttp.ClientSession(running.url) as s:
        resp = await s.post("/api/chat", json={"message": "Budget for the new office",
                                               "stream": True}, headers=user.headers)
        async for name, data in events(resp):
            if name == "meta":
                conv = data["conversation_id"]
            if name == "message":  # the reply is under way: the next requests fail
                await sim_post(simulator, "/sim/faults", {"mode": "500", "count": 10})
            assert name != "error"
    await until(lambda: ended(running, "failed"))
    assert (await conversation(running, user, conv))["title"] == "Budget for the new office"
    assert await storage_of(running).conversations.title_source(user.id, conv) == "first_line"


async def test_an_imported_conversation_keeps_its_title(custom: Any,
                                                        simulator: SimServer) -> None:
    running, user = await titled(custom, simulator)
    body = {"format": "chatgate.conversation", "version": 1, "title": "From elsewhere",
            "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession(running.url) as s:
        async with s.post("/api/conversations/import", json=body,
                          headers=user.headers) as resp:
            assert resp.status == 200, await resp.text()
            conv = (await resp.json())["imported"][0]["id"]
    assert await storage_of(running).conversations.title_source(user.id, conv) == "user"


async def test_a_title_from_before_generated_titles_survives_an_edit_of_the_first_message(
        custom: Any, simulator: SimServer) -> None:
    """V12 marks every older title automatic, renamed ones too: only a conversation's very
    first exchange may ask for a title, not a later edit (or regenerate) of its first message,
    whose prompt holds no reply either."""
    running, user = await titled(custom, simulator)
    first = await chat(running, user, "hello there")
    conv = first["conversation_id"]
    await until(lambda: ended(running, "done"))
    # As V12 left a title renamed before it.
    await execute(running, "UPDATE conversations SET title = 'Renamed long ago', "
                  "title_source = 'first_line' WHERE id = ?", conv)
    shown = await conversation(running, user, conv)
    async with aiohttp.ClientSession(running.url) as s:
        for body in ({"edit_message_id": shown["messages"][0]["id"], "message": "hi again"},
                     {"regenerate": True}):
            async with s.post("/api/chat", json={"conversation_id": conv, **body},
                              headers=user.headers) as resp:
                assert resp.status == 200, await resp.text()
    await until(lambda: not running.app[keys.TITLES]._tasks)  # any title job has ended
    assert (await conversation(running, user, conv))["title"] == "Renamed long ago"
