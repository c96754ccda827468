"""The conversation settings panel in a real browser: set, applied to the next turn, kept, cleared.

The fixtures (one simulator, server and Chromium for the module, a watched page per test) are
in conftest.py beside this file.
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Page, expect

from tests.support.web import Web, messages

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]


async def last_sent(web: Web) -> dict[str, Any]:
    """The last request the simulator received."""
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{web.sim.root_url}/sim/requests") as resp:
            sent: dict[str, Any] = (await resp.json())[-1]
            return sent


def panel(page: Page) -> Any:
    return page.get_by_role("dialog", name="Conversation settings")


async def open_panel(page: Page) -> Any:
    await page.get_by_role("button", name="Conversation settings").click()
    dialog = panel(page)
    await expect(dialog).to_be_visible()
    await expect(dialog).to_have_attribute("aria-busy", "false")
    return dialog


async def test_settings_are_set_applied_kept_and_cleared(web: Web) -> None:
    page = web.page
    user = await web.user()
    await web.open("/")
    button = page.get_by_role("button", name="Conversation settings")
    await web.send("Hello")
    await web.idle()
    await expect(page).to_have_url(re.compile(r"#/c/\d+$"))
    conv = int(page.url.rsplit("/", 1)[1])

    # Keyboard: Enter opens the panel; every field starts on its default.
    await button.focus()
    await page.keyboard.press("Enter")
    dialog = panel(page)
    await expect(dialog).to_be_visible()
    await expect(dialog).to_have_attribute("aria-busy", "false")
    prompt, temp, tokens = (dialog.get_by_label(n, exact=True)
                            for n in ("System prompt", "Temperature", "Max tokens"))
    for name in ("system prompt", "temperature", "max tokens"):
        await expect(dialog.get_by_label(f"Use the default {name}")).to_be_checked()
    await expect(prompt).to_be_disabled()
    await expect(tokens).to_have_attribute("max", "32768")
    await expect(temp).to_have_attribute("max", "2")
    await web.axe()
    await page.emulate_media(color_scheme="dark")
    await web.axe()
    await page.emulate_media(color_scheme="light")

    await dialog.get_by_label("Use the default system prompt").uncheck()
    await expect(prompt).to_be_focused()
    await prompt.fill("Answer in verse.")
    await dialog.get_by_label("Use the default max tokens").uncheck()
    await tokens.fill("123")
    await dialog.get_by_role("button", name="Save").click()
    await expect(dialog).to_be_hidden()
    await expect(button).to_be_focused()
    stored = await web.call(user, "GET", f"/api/conversations/{conv}")
    assert stored["settings"] == {"system_prompt": "Answer in verse.", "max_tokens": 123}

    # The next turn carries them to the model.
    await web.send("Tell me about the sea.")
    await web.idle()
    await expect(messages(page)).to_have_count(4)
    sent = await last_sent(web)
    assert sent["messages"][0] == {"role": "system", "content": "Answer in verse."}
    assert sent["max_tokens"] == 123

    # Kept over a reload; Cancel changes nothing; "use default" clears one.
    await page.reload()
    await expect(messages(page)).to_have_count(4)
    dialog = await open_panel(page)
    await expect(prompt).to_have_value("Answer in verse.")
    await expect(tokens).to_have_value("123")
    await expect(dialog.get_by_label("Use the default temperature")).to_be_checked()
    await tokens.fill("5")
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(dialog).to_be_hidden()
    dialog = await open_panel(page)
    await expect(tokens).to_have_value("123")
    await dialog.get_by_label("Use the default max tokens").check()
    await expect(tokens).to_be_disabled()
    await dialog.get_by_role("button", name="Save").click()
    await expect(dialog).to_be_hidden()
    stored = await web.call(user, "GET", f"/api/conversations/{conv}")
    assert stored["settings"] == {"system_prompt": "Answer in verse."}
    await web.send("And the wind?")
    await web.idle()
    sent = await last_sent(web)
    assert sent["messages"][0]["content"] == "Answer in verse."
    assert sent.get("max_tokens") != 123

    # Esc closes the panel (and nothing else); a server's refusal is said in words.
    dialog = await open_panel(page)
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    dialog = await open_panel(page)
    web.watched.allow(404, f"/api/conversations/{conv}")
    await web.call(user, "DELETE", f"/api/conversations/{conv}")
    await dialog.get_by_role("button", name="Save").click()
    await expect(dialog.get_by_role("alert")).to_contain_text("The settings were not saved:")
    await expect(dialog).to_be_visible()


async def test_a_new_chats_settings_go_with_its_first_message(web: Web) -> None:
    page = web.page
    user = await web.user()
    await web.open("/")
    button = page.get_by_role("button", name="Conversation settings")
    await expect(button).to_be_enabled()  # before the first message: the page holds them
    dialog = await open_panel(page)
    prompt, temp, tokens = (dialog.get_by_label(n, exact=True)
                            for n in ("System prompt", "Temperature", "Max tokens"))
    for name in ("system prompt", "temperature", "max tokens"):
        await expect(dialog.get_by_label(f"Use the default {name}")).to_be_checked()
    await dialog.get_by_label("Use the default system prompt").uncheck()
    await prompt.fill("Answer in verse.")
    await dialog.get_by_label("Use the default temperature").uncheck()
    await temp.fill("0.3")
    await dialog.get_by_role("button", name="Save").click()
    await expect(dialog).to_be_hidden()
    await expect(button).to_be_focused()
    # Nothing is made on the server until the first message.
    assert (await web.call(user, "GET", "/api/conversations"))["conversations"] == []

    # Opened again: the values held, and the preview shows what the first turn will send.
    dialog = await open_panel(page)
    await expect(prompt).to_have_value("Answer in verse.")
    await expect(temp).to_have_value("0.3")
    await expect(dialog.get_by_label("Use the default max tokens")).to_be_checked()
    await dialog.get_by_text("What the model will see").click()
    shown = dialog.locator(".preview-body")
    await expect(shown).to_contain_text("the first turn sends this")
    await expect(shown).to_contain_text("temperature 0.3")
    await expect(shown.locator(".preview-list li")).to_have_count(1)
    await expect(shown.locator(".preview-text")).to_have_text("Answer in verse.")
    await web.axe()
    await page.emulate_media(color_scheme="dark")
    await web.axe()
    await page.emulate_media(color_scheme="light")
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(dialog).to_be_hidden()

    # The first message carries them to the model, and the conversation is made with them.
    await web.send("Tell me about the sea.")
    await web.idle()
    await expect(messages(page)).to_have_count(2)
    sent = await last_sent(web)
    assert sent["messages"] == [{"role": "system", "content": "Answer in verse."},
                                {"role": "user", "content": "Tell me about the sea."}]
    assert sent["temperature"] == 0.3
    await expect(page).to_have_url(re.compile(r"#/c/\d+$"))
    conv = int(page.url.rsplit("/", 1)[1])
    stored = await web.call(user, "GET", f"/api/conversations/{conv}")
    assert stored["settings"] == {"system_prompt": "Answer in verse.", "temperature": 0.3}

    # After a reload the panel shows the stored values.
    await page.reload()
    await expect(messages(page)).to_have_count(2)
    dialog = await open_panel(page)
    await expect(prompt).to_have_value("Answer in verse.")
    await expect(temp).to_have_value("0.3")
    await expect(dialog.get_by_label("Use the default max tokens")).to_be_checked()
    await dialog.get_by_role("button", name="Cancel").click()

    # They were this chat's: the next new chat starts on the defaults again.
    await page.get_by_role("link", name="New chat").click()
    await expect(page.locator("#title")).to_have_text("New chat")
    dialog = await open_panel(page)
    await expect(dialog.get_by_label("Use the default system prompt")).to_be_checked()
    await expect(dialog.get_by_label("Use the default temperature")).to_be_checked()
    await dialog.get_by_role("button", name="Cancel").click()
    await web.send("And the wind?")
    await web.idle()
    sent = await last_sent(web)
    assert sent["messages"][0]["content"] != "Answer in verse." and sent["temperature"] != 0.3
