"""Branches in a real browser: edit any question and regenerate any reply without losing what
followed, "‹ 2/3 ›" to switch, delete a version, a search hit on a hidden branch, a reload.

The simulator echoes the user's message (`echo`), so a reply says which question it answers.
The fixtures (one simulator, server and Chromium for the module, a watched page per test) are
in conftest.py beside this file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Page, expect

from server import keys
from tests.support.paths import ROOT
from tests.support.web import Web, messages

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

QUESTIONS = ["question alpha", "question bravo", "question charlie"]


async def sent_to_model(web: Web) -> list[str]:
    """The contents of the user and assistant messages of the simulator's last request."""
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{web.sim.root_url}/sim/requests") as resp:
            sent = (await resp.json())[-1]["messages"]
    return [m["content"] for m in sent if m["role"] != "system"]


async def faults(web: Web, **body: Any) -> None:
    """Make the simulator fail (or stop failing)."""
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{web.sim.root_url}/sim/faults", json=body) as resp:
            assert resp.status == 200, await resp.text()


async def three_turns(web: Web, user: dict[str, Any]) -> int:
    """A conversation of three echoed questions and answers, made over the API."""
    await web.sim_config(echo=True)
    conv = await web.chat(user, QUESTIONS[0])
    for q in QUESTIONS[1:]:
        await web.chat(user, q, conv)
    return conv


def versions(message: Any) -> Any:
    return message.get_by_role("group", name=re.compile(r"^Version \d+ of \d+$"))


async def shown(page: Page) -> list[str]:
    return [t.strip() for t in await messages(page).locator(".body").all_inner_texts()]


async def test_edit_the_first_question_then_switch_back_and_reload(web: Web) -> None:
    page = web.page
    user = await web.user()
    conv = await three_turns(web, user)
    await web.open(f"/#/c/{conv}")
    await expect(messages(page)).to_have_count(6)
    await expect(versions(page)).to_have_count(0)

    first = messages(page, "user").first
    await first.get_by_role("button", name="Edit this message").click()
    editor = page.get_by_role("textbox", name="Edit your message")
    await expect(editor).to_be_focused()
    await editor.fill("question delta")
    await editor.press("Enter")
    await web.idle()
    # The new version and its answer; the later turns are gone from view, not from the server.
    await expect(messages(page)).to_have_count(2)
    assert await shown(page) == ["question delta", "question delta"]
    assert await sent_to_model(web) == ["question delta"], "the prompt is the new path only"
    group = versions(messages(page, "user").first)
    await expect(group).to_have_accessible_name("Version 2 of 2")
    await expect(group.locator(".count")).to_have_text("2/2")
    await expect(group.get_by_role("button", name="Next version")).to_be_disabled()
    await web.axe()
    await page.emulate_media(color_scheme="dark")
    await web.axe()
    await page.emulate_media(color_scheme="light")

    # ‹ brings the old version back with everything that followed it.
    await group.get_by_role("button", name="Previous version").click()
    await expect(messages(page)).to_have_count(6)
    assert await shown(page) == [q for q in QUESTIONS for _ in (0, 1)]
    group = versions(messages(page, "user").first)
    await expect(group.locator(".count")).to_have_text("1/2")
    await expect(group.get_by_role("button", name="Next version")).to_be_focused()
    await expect(page.locator("#live")).to_contain_text("Version 1 of 2")

    # The server keeps the branch on show: a reload (and the API) show the same one.
    await page.reload()
    await expect(messages(page)).to_have_count(6)
    await expect(versions(messages(page, "user").first).locator(".count")).to_have_text("1/2")
    assert [m["content"] for m in await web.messages(user, conv)][::2] == QUESTIONS
    await versions(messages(page, "user").first).get_by_role("button", name="Next version").click()
    await expect(messages(page)).to_have_count(2)
    await page.reload()
    await expect(messages(page)).to_have_count(2)
    assert await shown(page) == ["question delta", "question delta"]

    # A message sent now follows the branch on show.
    await web.send("question echo")
    await web.idle()
    assert await sent_to_model(web) == ["question delta", "question delta", "question echo"]
    assert page.url.endswith(f"#/c/{conv}")


async def test_regenerate_a_middle_reply_edit_a_middle_question_and_delete_a_version(
        web: Web) -> None:
    page = web.page
    user = await web.user()
    conv = await three_turns(web, user)
    await web.open(f"/#/c/{conv}")
    await expect(messages(page)).to_have_count(6)

    await web.sim_config(echo=False)
    middle = messages(page, "assistant").nth(1)
    await middle.get_by_role("button", name="Regenerate this reply").click()
    await web.idle()
    await expect(messages(page)).to_have_count(4)
    reply = messages(page, "assistant").last
    await expect(reply.locator(".body")).to_contain_text("Simulated")
    await expect(versions(reply).locator(".count")).to_have_text("2/2")
    assert await sent_to_model(web) == QUESTIONS[:1] * 2 + QUESTIONS[1:2]

    # Switching keeps the switched message where it was on screen (the page scrolls here).
    await page.set_viewport_size({"width": 1280, "height": 420})
    await reply.scroll_into_view_if_needed()
    before = await reply.bounding_box()
    await versions(reply).get_by_role("button", name="Previous version").click()
    await expect(messages(page)).to_have_count(6)
    again = messages(page, "assistant").nth(1)
    await expect(versions(again).locator(".count")).to_have_text("1/2")
    after = await again.bounding_box()
    assert before and after and abs(after["y"] - before["y"]) < 2, (before, after)
    await page.set_viewport_size({"width": 1280, "height": 800})
    await versions(messages(page, "assistant").nth(1)).get_by_role(
        "button", name="Next version").click()
    await expect(messages(page)).to_have_count(4)

    # Delete this version: asks first; Cancel keeps it, Delete shows the branch left beside it.
    reply = messages(page, "assistant").last
    await reply.get_by_role("button", name="Delete this version").click()
    dialog = page.locator("#confirm")
    await expect(dialog).to_contain_text("Delete this version of the reply")
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(messages(page)).to_have_count(4)
    await reply.get_by_role("button", name="Delete this version").click()
    await dialog.get_by_role("button", name="Delete").click()
    await expect(messages(page)).to_have_count(6)
    await expect(versions(page)).to_have_count(0)
    assert await shown(page) == [q for q in QUESTIONS for _ in (0, 1)]
    stored = await web.messages(user, conv)
    assert len(stored) == 6 and not any("siblings" in m for m in stored)

    # Edit the middle question: the model gets the path to it, not the branch left behind.
    await web.sim_config(echo=True)
    await messages(page, "user").nth(1).get_by_role("button", name="Edit this message").click()
    editor = page.get_by_role("textbox", name="Edit your message")
    await editor.fill("question foxtrot")
    await editor.press("Enter")
    await web.idle()
    assert await shown(page) == [QUESTIONS[0], QUESTIONS[0], "question foxtrot", "question foxtrot"]
    assert await sent_to_model(web) == [QUESTIONS[0], QUESTIONS[0], "question foxtrot"]
    await expect(versions(messages(page, "user").nth(1)).locator(".count")).to_have_text("2/2")


async def test_a_search_hit_on_a_hidden_branch_opens_it(web: Web) -> None:
    page = web.page
    user = await web.user()
    await web.sim_config(echo=True)
    conv = await web.chat(user, "where do quokkas live")
    await web.chat(user, "and what do they eat", conv)
    hidden = (await web.messages(user, conv))[0]["id"]
    await web.call(user, "POST", "/api/chat", {"conversation_id": conv, "edit_message_id": hidden,
                                               "message": "tell me about wombats"})
    await web.open(f"/#/c/{conv}")
    await expect(messages(page)).to_have_count(2)
    assert "quokkas" not in " ".join(await shown(page))

    await page.locator("#search").press_sequentially("quokkas", delay=20)
    hit = page.locator(f'#result-list a.hit[href="#/c/{conv}/m/{hidden}"]')
    await hit.click()
    target = page.locator(f'#messages > li[data-id="{hidden}"]')
    await expect(target).to_have_class(re.compile(r"\bhit\b"))
    await expect(target).to_be_in_viewport()
    await expect(messages(page)).to_have_count(4)
    await expect(versions(target).locator(".count")).to_have_text("1/2")
    await expect(target).to_be_focused()
    assert [m["id"] for m in await web.messages(user, conv)][0] == hidden, "the branch on show"
    # The same hit once more (the address does not change): it is shown and focused again.
    await page.locator("#input").focus()
    await hit.click()
    await expect(target).to_be_focused()

    # Switching away drops the hit from the address, so a reload keeps the branch chosen.
    await versions(target).get_by_role("button", name="Next version").click()
    await expect(messages(page)).to_have_count(2)
    assert page.url.endswith(f"#/c/{conv}")
    await page.reload()
    await expect(messages(page)).to_have_count(2)
    assert "quokkas" not in " ".join(await shown(page))

    # The same hit again, from another conversation this time.
    await page.locator("#new-chat").click()
    await expect(messages(page)).to_have_count(0)
    await page.locator("#search").press_sequentially("quokkas", delay=20)
    await hit.click()
    await expect(target).to_have_class(re.compile(r"\bhit\b"))
    await expect(messages(page)).to_have_count(4)


async def test_a_new_chat_edited_and_a_failed_regenerate(web: Web) -> None:
    page = web.page
    await web.user()
    await web.sim_config(echo=True)
    await web.open("/")
    await web.send("first words")
    await web.idle()
    await messages(page, "user").first.get_by_role(
        "button", name="Edit and resend your last message").click()
    editor = page.get_by_role("textbox", name="Edit your message")
    await editor.fill("better words")
    await editor.press("Enter")
    await web.idle()
    await expect(versions(messages(page, "user").first).locator(".count")).to_have_text("2/2")

    # A regenerate that fails is a version too: it can be left, or deleted.
    await faults(web, mode="500", count=3)
    await messages(page, "assistant").last.get_by_role(
        "button", name="Regenerate the last reply").click()
    await web.idle()
    failed = messages(page, "assistant").last
    await expect(failed.locator(".failure")).to_be_visible()
    await expect(versions(failed).locator(".count")).to_have_text("2/2")
    await faults(web, mode="none")
    await failed.get_by_role("button", name="Delete this version").click()
    await page.locator("#confirm").get_by_role("button", name="Delete").click()
    await expect(messages(page, "assistant").locator(".failure")).to_have_count(0)
    await expect(versions(messages(page, "assistant").last)).to_have_count(0)
    assert await shown(page) == ["better words", "better words"]


async def test_versions_wait_while_a_reply_streams(web: Web) -> None:
    page = web.page
    user = await web.user()
    await web.sim_config(echo=True)
    conv = await web.chat(user, "first try")
    first = (await web.messages(user, conv))[0]["id"]
    await web.call(user, "POST", "/api/chat", {"conversation_id": conv, "edit_message_id": first,
                                               "message": "second try"})
    await web.open(f"/#/c/{conv}")
    group = versions(messages(page, "user").first)
    await expect(group.locator(".count")).to_have_text("2/2")
    await web.sim_config(tpot_ms=40)
    await web.send(" ".join(f"w{i}" for i in range(150)))
    await expect(messages(page, "assistant").last.locator(".body")).to_contain_text("w3")
    # The reply will be stored on this branch: until it ends, the view stays on it.
    await expect(group.get_by_role("button", name="Previous version")).to_be_disabled()
    await expect(page.get_by_role("button", name="Delete this version")).to_have_count(0)
    await page.keyboard.press("Escape")
    await web.idle()
    await expect(group.get_by_role("button", name="Previous version")).to_be_enabled()
    await expect(messages(page, "user").first.get_by_role(
        "button", name="Delete this version")).to_be_visible()


NAMES = [
    "**notesync**: it says what it does, it is short to type, and it reads well in a "
    "crontab line: `notesync push`.",
    "**Tether**: your notes stay tied together across machines. One word, easy to remember, "
    "and `tether pull` / `tether push` read naturally.",
    "**Shuttle**: it carries notes back and forth. Check that the name is free on PyPI and "
    "Homebrew before you settle on it.",
]


async def test_screenshots_of_versions(web: Web, tmp_path: Path) -> None:
    """Renders a reply with three versions; CHATGATE_SCREENSHOTS=1 refreshes docs/ with it."""
    out = ROOT / "docs" if os.environ.get("CHATGATE_SCREENSHOTS") == "1" else tmp_path
    page = web.page
    await web.user(login=False)  # run alone, the first user would be an admin (and say so)
    user = await web.user(name="grace")
    uid, now = user["user"]["id"], "2030-01-01T00:00:00.000Z"

    def seed(conn: Any) -> int:  # three replies to one question, written by hand
        conv = int(conn.execute(
            "INSERT INTO conversations (user_id, title, created_at, updated_at) "
            "VALUES (?, ?, ?, ?)", (uid, "A name for a notes sync tool", now, now)).lastrowid)
        question = conn.execute(
            "INSERT INTO messages (conversation_id, role, content, created_at) VALUES (?, ?, ?, ?)",
            (conv, "user", "Suggest a name for a small command-line tool that syncs notes "
                           "between my laptops", now)).lastrowid
        for text in NAMES:  # siblings: each a version of the reply
            leaf = conn.execute(
                "INSERT INTO messages (conversation_id, role, content, created_at, parent_id) "
                "VALUES (?, ?, ?, ?, ?)", (conv, "assistant", text, now, question)).lastrowid
        conn.execute("UPDATE conversations SET leaf_id = ? WHERE id = ?", (leaf, conv))
        return conv

    conv = await web.app.app[keys.STORAGE].db.write(seed)
    await page.set_viewport_size({"width": 1280, "height": 560})
    await web.open(f"/#/c/{conv}")
    reply = messages(page, "assistant").last
    await expect(versions(reply).locator(".count")).to_have_text("3/3")
    await versions(reply).get_by_role("button", name="Previous version").click()
    await expect(versions(messages(page, "assistant").last).locator(".count")).to_have_text("2/3")
    await page.mouse.move(0, 0)
    await page.screenshot(path=str(out / "screenshot-branches.png"))
    assert (out / "screenshot-branches.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
