"""The screenshots of docs/web-client.md for the model picker and settings, code and math,
summaries, and export/import: CHATGATE_SCREENSHOTS=1 refreshes docs/ with them.

The module's server has two models, each on a simulator of its own (as in test_models.py), so
the picker shows and replies name their model. Conversations are seeded by SQL (each message
under the one before it), so the pictures show real Markdown, code and math; without the
variable the pictures go to a temporary directory and only their being PNGs is checked.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Page, expect

from server import keys
from server.config import build_config
from server.runner import Running, start
from tests.support.app import make_config
from tests.support.exports import node
from tests.support.paths import ROOT
from tests.support.web import SIM_DEFAULTS, Web, messages
from vllm_sim import SimServer, SimSettings, start_simulator

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

FIRST, SECOND = "llama-3.1-8b-instruct", "qwen2.5-coder-7b"
NOW = "2030-01-01T00:00:00.000Z"
CODE_CSS_IN = "() => [...document.styleSheets].some((s) => s.href?.endsWith('/static/code.css'))"
SIDEBAR = ("Trip ideas for the Alps", "Explain SQLite WAL mode", "Regex for ISO dates")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim(chromium_present: None) -> AsyncIterator[SimServer]:
    """The simulator of the default model."""
    server = await start_simulator(SimSettings(**SIM_DEFAULTS, model=FIRST))
    yield server
    await server.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def second(chromium_present: None) -> AsyncIterator[SimServer]:
    """The simulator of the second model."""
    server = await start_simulator(SimSettings(**SIM_DEFAULTS, model=SECOND))
    yield server
    await server.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app(sim: SimServer, second: SimServer,
              tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    """The real server with two models, one replica each."""
    models = build_config({"models": [{"name": FIRST, "replicas": [{"url": sim.url}]},
                                      {"name": SECOND, "replicas": [{"url": second.url}]}]})
    config = dataclasses.replace(make_config(tmp_path_factory.mktemp("shots"), sim.url),
                                 models=models.models)
    running = await start(config)
    yield running
    await running.stop()


def out_dir(tmp_path: Path) -> Path:
    return ROOT / "docs" if os.environ.get("CHATGATE_SCREENSHOTS") == "1" else tmp_path


async def shoot(page: Page, path: Path) -> None:
    """The page as it is, with no pointer hovering anything."""
    await page.mouse.move(0, 0)
    await page.screenshot(path=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def person(web: Web, name: str) -> dict[str, Any]:
    """A plain user (not the first account, which would be an admin) with a few chats."""
    await web.user(login=False)
    user = await web.user(name=name)
    for title in SIDEBAR:
        await web.chat(user, title)
    return user


async def seed(web: Web, user: dict[str, Any], title: str, turns: Sequence[tuple[str, ...]],
               model: str = FIRST) -> tuple[int, list[int]]:
    """A conversation written by hand, one branch: (role, text) or (role, text, model) each;
    its id and its messages' ids. Replies without a model of their own name `model`."""
    uid = user["user"]["id"]

    def write(conn: Any) -> tuple[int, list[int]]:
        conv = int(conn.execute(
            "INSERT INTO conversations (user_id, title, created_at, updated_at, model) "
            "VALUES (?, ?, ?, ?, ?)", (uid, title, NOW, NOW, model)).lastrowid)
        ids: list[int] = []
        for role, text, *by in turns:
            ids.append(int(conn.execute(
                "INSERT INTO messages (conversation_id, role, content, created_at, parent_id, "
                "model) VALUES (?, ?, ?, ?, ?, ?)",
                (conv, role, text, NOW, ids[-1] if ids else None,
                 (by or [model])[0] if role == "assistant" else None)).lastrowid))
        return conv, ids

    result: tuple[int, list[int]] = await web.app.app[keys.STORAGE].db.write(write)
    return result


# ---- the model picker ---------------------------------------------------------------------------

MODELS_CHAT = [
    ("user", "Write a regular expression that matches an ISO 8601 date like 2024-02-29."),
    ("assistant", "This one checks the shape and the ranges of month and day:\n\n"
                  "```\n^\\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\\d|3[01])$\n```\n\n"
                  "It does not know that February has no 30th: check that in code.", FIRST),
    ("user", "Turn it into a Python function that also rejects impossible dates."),
    ("assistant", "Let `datetime` do the calendar:\n\n"
                  "```python\nimport re\nfrom datetime import date\n\n"
                  "ISO_DATE = re.compile(r\"\\d{4}-\\d{2}-\\d{2}\")\n\n\n"
                  "def is_iso_date(text: str) -> bool:\n"
                  "    if not ISO_DATE.fullmatch(text):\n        return False\n"
                  "    try:\n        date.fromisoformat(text)\n"
                  "    except ValueError:\n        return False\n    return True\n```", SECOND),
]


async def test_screenshot_of_the_model_picker(web: Web, tmp_path: Path) -> None:
    page = web.page
    user = await person(web, "katherine")
    conv, _ = await seed(web, user, "Validate ISO dates", MODELS_CHAT, model=SECOND)
    await page.set_viewport_size({"width": 1280, "height": 800})
    await web.open(f"/#/c/{conv}")
    await expect(messages(page)).to_have_count(4)
    picker = page.get_by_label("Model", exact=True)
    await expect(picker.locator("option")).to_have_text([FIRST, SECOND])
    await expect(picker).to_have_value(SECOND)  # the conversation's model
    await expect(messages(page, "assistant").locator(".by")).to_have_text([FIRST, SECOND])
    await page.wait_for_function(CODE_CSS_IN)
    await page.locator("#input").fill("Add a few pytest cases for it.")
    await page.locator("#input").blur()
    await shoot(page, out_dir(tmp_path) / "screenshot-models.png")


# ---- the settings panel with its prompt preview -------------------------------------------------

SETTINGS_CHAT = [
    ("user", "Our nightly backup sometimes runs twice. How do I stop two copies at once?"),
    ("assistant", "Take a lock first: `flock -n /run/backup.lock backup.sh` in the crontab "
                  "line runs the script only when no other copy holds the lock."),
]


async def test_screenshot_of_the_settings_panel(web: Web, tmp_path: Path) -> None:
    page = web.page
    user = await person(web, "ada")
    for text in ("I write Python 3.12 and deploy on Debian", "Prefer short answers with code"):
        await web.call(user, "POST", "/api/memories", {"content": text})
    await web.call(user, "PATCH", "/api/account", {"settings": {
        "system_prompt": "You are a helpful assistant for a small infrastructure team."}})
    conv, _ = await seed(web, user, "Stop a cron job running twice", SETTINGS_CHAT)
    await web.call(user, "PATCH", f"/api/conversations/{conv}",
                   {"settings": {"temperature": 0.3}})
    # Tall enough for the whole panel with its preview open (the page behind is blurred).
    await page.set_viewport_size({"width": 1280, "height": 1200})
    await web.open(f"/#/c/{conv}")
    await expect(messages(page)).to_have_count(2)
    await page.get_by_role("button", name="Conversation settings").click()
    dialog = page.get_by_role("dialog", name="Conversation settings")
    await expect(dialog.get_by_label("Temperature", exact=True)).to_have_value("0.3")
    await dialog.get_by_text("What the model will see").click()
    items = dialog.locator("details.preview li")
    await expect(items).to_have_count(3)  # system (default prompt + memories), question, reply
    await expect(items.first).to_contain_text("small infrastructure team")
    await expect(items.first).to_contain_text("I write Python 3.12")
    await expect(dialog.locator(".preview-body .hint")).to_contain_text("temperature 0.3")
    # The whole panel shows: neither it nor the preview has anything scrolled out of sight.
    cut = await dialog.evaluate("(d) => [d, d.querySelector('.preview-body')]"
                                ".some((el) => el.scrollHeight > el.clientHeight)")
    assert not cut, "the panel does not fit the viewport"
    await shoot(page, out_dir(tmp_path) / "screenshot-settings.png")


# ---- code and math -----------------------------------------------------------------------------

CODE_MATH_CHAT = [
    ("user", "What is the sample standard deviation, and how do I compute it in Python?"),
    ("assistant",
     "For values $x_1, \\dots, x_n$ with mean $\\bar{x}$, the sample standard deviation is\n\n"
     "$$s = \\sqrt{\\frac{1}{n-1} \\sum_{i=1}^{n} (x_i - \\bar{x})^2}$$\n\n"
     "Dividing by $n-1$ rather than $n$ (Bessel's correction) keeps $s^2$ an unbiased "
     "estimate of the variance. The standard library has it:\n\n"
     "```python\nfrom statistics import mean, stdev\n\n"
     "latencies_ms = [12.1, 11.8, 13.4, 12.6, 30.2]  # one slow request\n"
     "print(f\"mean {mean(latencies_ms):.1f} ms, s = {stdev(latencies_ms):.1f} ms\")\n```\n\n"
     "For large arrays, `numpy.std(a, ddof=1)` gives the same result."),
]


async def test_screenshot_of_code_and_math(web: Web, tmp_path: Path) -> None:
    page = web.page
    user = await person(web, "grace")
    conv, _ = await seed(web, user, "Sample standard deviation", CODE_MATH_CHAT)
    await page.set_viewport_size({"width": 1280, "height": 800})
    await web.open(f"/#/c/{conv}")
    reply = messages(page, "assistant").last
    await expect(reply.locator("pre.hl")).to_have_count(1)
    await expect(reply.locator("math")).to_have_count(6)  # five inline, one display
    await page.wait_for_function(CODE_CSS_IN)  # the code in its colours
    await shoot(page, out_dir(tmp_path) / "screenshot-code-math.png")


# ---- the summary of older turns ----------------------------------------------------------------

SUMMARY_CHAT = [
    ("user", "I'm planning a week in Portugal in May with two kids (6 and 9). We land in Lisbon."),
    ("assistant", "Lisbon is a good base. With kids that age, plan three nights there (the "
                  "Oceanário, the tram 28 ride, Belém's pastries), then head out of the city."),
    ("user", "We'd rather not drive. Is the train to Porto easy?"),
    ("assistant", "Yes: the Alfa Pendular takes about three hours from Santa Apolónia to "
                  "Porto Campanhã, with seats you can book ahead. Children under 4 travel "
                  "free; yours pay a reduced fare."),
    ("user", "Great. What could we do on a rainy day in Porto?"),
    ("assistant", "- **World of Discoveries**, an interactive museum on the Age of "
                  "Discoveries, with a boat ride indoors.\n"
                  "- **Livraria Lello** early in the morning, before the queue.\n"
                  "- **The Port wine cellars** in Gaia: some have tours with grape juice for "
                  "children."),
]
SUMMARY = ("The family (two kids, 6 and 9) spends a week in Portugal in May, landing in "
           "Lisbon: three nights there (Oceanário, tram 28, Belém), then the Alfa Pendular "
           "train to Porto (about three hours, reduced fares for children). They prefer not "
           "to drive.")


async def test_screenshot_of_a_summary(web: Web, tmp_path: Path) -> None:
    page = web.page
    user = await person(web, "linus")
    conv, ids = await seed(web, user, "A week in Portugal with kids", SUMMARY_CHAT)

    def summarise(conn: Any) -> None:  # as the background job stores it, on the 2nd reply
        conn.execute("INSERT INTO summaries (message_id, content, model, created_at) "
                     "VALUES (?, ?, ?, ?)", (ids[3], SUMMARY, FIRST, NOW))

    await web.app.app[keys.STORAGE].db.write(summarise)
    await page.set_viewport_size({"width": 1280, "height": 1040})  # all of it
    await web.open(f"/#/c/{conv}")
    summary = page.locator(".msg details.summary")
    await expect(summary).to_have_count(1)
    await expect(messages(page, "assistant").nth(1).locator("details.summary")).to_have_count(1)
    await expect(summary.locator("p")).to_be_hidden()  # collapsed until asked
    await summary.locator("summary").click()
    await expect(summary.locator("p")).to_contain_text("Alfa Pendular")
    await page.locator("#input").fill("And a day trip from Porto by train?")
    await page.locator("#input").blur()
    await expect(page.locator("#jump")).to_be_hidden()  # the whole conversation on screen
    await shoot(page, out_dir(tmp_path) / "screenshot-summary.png")


# ---- export and import -------------------------------------------------------------------------

def chatgpt_export() -> list[dict[str, Any]]:
    """A ChatGPT conversations.json: two conversations, and one it cannot read."""
    t = 1_790_000_000.0
    recipe = {
        "title": "Sourdough starter schedule", "create_time": t, "current_node": "a2",
        "mapping": {
            "root": node("root", None, ["u1"]),
            "u1": node("u1", "root", ["a1"], "user",
                       ["How often should I feed a sourdough starter kept in the fridge?"], t + 1),
            "a1": node("a1", "u1", ["u2"], "assistant",
                       ["Once a week is enough. Take it out, discard all but about 50 g, feed "
                        "it equal weights of flour and water, leave it at room temperature for "
                        "a few hours until bubbly, then put it back."], t + 2,
                       model_slug="gpt-4o"),
            "u2": node("u2", "a1", ["a2"], "user", ["And before baking?"], t + 3),
            "a2": node("a2", "u2", [], "assistant",
                       ["Feed it twice in the 24 hours before you mix the dough, so it is at "
                        "its most active: it should roughly double within 4 to 6 hours."],
                       t + 4, model_slug="gpt-4o")}}
    cover = {
        "title": "Cover letter feedback", "create_time": t - 86_400, "current_node": "b",
        "mapping": {"r": node("r", None, ["a"]),
                    "a": node("a", "r", ["b"], "user",
                              ["Can you make my opening sentence less formal?"], t - 86_399),
                    "b": node("b", "a", [], "assistant",
                              ["Try: \u201cI've spent five years building data pipelines, "
                               "and I'd love to do it for your team.\u201d"], t - 86_398)}}
    broken = {"title": "Shared link", "create_time": t - 172_800,  # its nodes form a loop
              "mapping": {"x": node("x", "y", ["y"]), "y": node("y", "x", ["x"])}}
    return [recipe, cover, broken]


async def test_screenshot_of_export_and_import(web: Web, tmp_path: Path) -> None:
    page = web.page
    await person(web, "margaret")
    await page.set_viewport_size({"width": 1280, "height": 800})
    await web.open("/")
    await page.locator("#import-file").set_input_files(files=[{
        "name": "conversations.json", "mimeType": "application/json",
        "buffer": json.dumps(chatgpt_export()).encode()}])
    status = page.locator("#transfer-status")
    await expect(status).to_contain_text("Imported 2 conversations.")
    await expect(status).to_contain_text("Not imported: Shared link:")
    await expect(page.locator("#title")).to_have_text("Sourdough starter schedule")
    await expect(messages(page)).to_have_count(4)
    await expect(page.get_by_role("link", name="Export this conversation as JSON")).to_be_visible()
    await expect(page.get_by_role("link", name="Export all")).to_be_visible()
    await shoot(page, out_dir(tmp_path) / "screenshot-export.png")
