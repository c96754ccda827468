"""Export and import in a real browser: import ChatGPT's conversations.json from the sidebar,
then download the open conversation (Markdown, JSON) and the whole account (JSON Lines)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from playwright.async_api import expect

from tests.support.exports import chatgpt_sample
from tests.support.web import Web

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]


async def test_import_then_export(web: Web) -> None:
    page = web.page
    loaded: list[str] = []
    page.on("request", lambda r: loaded.append(r.url))
    await page.goto("/")
    await expect(page.locator("#auth")).to_be_visible()
    await page.wait_for_load_state("networkidle")
    assert not any(u.endswith("/transfer.js") for u in loaded), "not before sign-in"

    user = await web.user()
    await web.open("/")
    await expect(page.get_by_role("link", name="Export this conversation as JSON")).to_be_hidden()

    # Import: the sidebar's Import opens a file picker; the file is posted as it is.
    await page.locator("#import-file").set_input_files(files=[{
        "name": "conversations.json", "mimeType": "application/json",
        "buffer": json.dumps(chatgpt_sample()).encode()}])
    await expect(page.locator("#transfer-status")).to_have_text("Imported 2 conversations.")
    await expect(page).to_have_url(re.compile(r"#/c/\d+$"))
    await expect(page.locator("#title")).to_have_text("Trip planning")
    await expect(page.locator("#messages")).to_contain_text("Try Tromsø.")
    await expect(page.locator("#messages")).not_to_contain_text("Porto.")  # another branch
    await expect(page.get_by_role("group", name="Version 2 of 2")).to_be_visible()  # ...kept
    await expect(page.locator("#conv-list")).to_contain_text("Second")
    conv = int(page.url.rsplit("/", 1)[1])

    # Export the open conversation: Markdown, then chatgate's JSON.
    async with page.expect_download() as info:
        await page.get_by_role("link", name="Export this conversation as Markdown").click()
    download = await info.value
    assert download.suggested_filename == f"chatgate-{conv}-trip-planning.md"
    text = Path(await download.path()).read_text(encoding="utf-8")
    assert text.startswith("# Trip planning\n\n## User\n\nWhere to in June?\n")
    async with page.expect_download() as info:
        await page.get_by_role("link", name="Export this conversation as JSON").click()
    exported = json.loads(Path(await (await info.value).path()).read_bytes())
    assert exported["id"] == conv and len(exported["messages"]) == 6  # both branches
    assert exported["leaf_id"] == exported["messages"][-1]["id"]

    # Export all: one line per conversation, which imports back (the round trip).
    async with page.expect_download() as info:
        await page.get_by_role("link", name="Export all").click()
    download = await info.value
    assert download.suggested_filename == f"chatgate-{user['user']['username']}.jsonl"
    lines = Path(await download.path()).read_bytes()
    assert [json.loads(x)["title"] for x in lines.splitlines()] == ["Trip planning", "Second"]
    await page.locator("#import-file").set_input_files(files=[{
        "name": "chatgate.jsonl", "mimeType": "application/x-ndjson", "buffer": lines}])
    await expect(page.locator("#transfer-status")).to_have_text("Imported 2 conversations.")
    await expect(page.locator("#conv-list li")).to_have_count(4)

    # A file in no known format says why, and imports nothing.
    web.watched.allow(400, "/api/conversations/import")
    await page.locator("#import-file").set_input_files(files=[{
        "name": "notes.json", "mimeType": "application/json", "buffer": b'{"hello": 1}'}])
    await expect(page.locator("#transfer-status")).to_contain_text(
        "Nothing was imported: the body is not a chatgate export")
    await web.axe()
