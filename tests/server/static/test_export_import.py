"""Export and import in a real browser: import ChatGPT's conversations.json from the sidebar,
then download the open conversation (Markdown, JSON) and the whole account (JSON Lines)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from server.runner import start
from tests.support.app import make_config
from tests.support.browser import api_user, login_context, new_page
from tests.support.exports import chatgpt_sample, node
from tests.support.web import Web
from vllm_sim import SimServer

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


async def test_a_rejected_conversation_and_a_file_past_the_cap_are_said(
        chromium: Browser, sim: SimServer, tmp_path: Path) -> None:
    capped = await start(make_config(tmp_path, sim.url, limits={"max_import_bytes": 100_000}))
    try:
        context, watched = await new_page(chromium, capped.url)
        page = watched.page
        await login_context(context, capped.url, await api_user(capped.url, "importer"))
        await page.goto("/")
        await expect(page.locator("#import")).to_be_visible()
        # A ChatGPT export with one broken conversation: the others come in, it is named.
        broken = {"title": "Broken", "mapping": {  # a cycle: no node is a root
            "x": node("x", "y", ["y"], "user", ["hi"]),
            "y": node("y", "x", ["x"], "assistant", ["hello"])}}
        watched.allow(207, "/api/conversations/import")
        await page.locator("#import-file").set_input_files(files=[{
            "name": "conversations.json", "mimeType": "application/json",
            "buffer": json.dumps([*chatgpt_sample(), broken]).encode()}])
        await expect(page.locator("#transfer-status")).to_have_text(
            "Imported 2 conversations. Not imported: Broken: the conversation has no root node")
        await expect(page.locator("#conv-list li")).to_have_count(2)
        # A file past limits.max_import_bytes: refused whole, and the cap said in words.
        watched.allow(413, "/api/conversations/import")
        await page.locator("#import-file").set_input_files(files=[{
            "name": "conversations.json", "mimeType": "application/json",
            "buffer": json.dumps([chatgpt_sample()[1]] * 8000).encode()}])  # about 1.9 MB
        await expect(page.locator("#transfer-status")).to_have_text(
            "Nothing was imported: an import may be at most 100,000 bytes"
            " (limits.max_import_bytes)")
        await expect(page.locator("#conv-list li")).to_have_count(2)
        await context.close()
        watched.check()
    finally:
        await capped.stop()
