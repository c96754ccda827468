"""The web client in a real browser: hostile content, copy, narrow screens, dark mode.

One simulator, one server and one browser serve the whole module; every test gets a fresh
browser context (its own cookies) and a fresh user, and its page is watched for console
errors, uncaught exceptions, JavaScript dialogs and a missing Content-Security-Policy
(the fixtures are in conftest.py beside this file).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, expect

from server import keys
from server.middleware.headers import CSP
from tests.support.paths import ROOT
from tests.support.web import Web, messages, rows

MATHML = "http://www.w3.org/1998/Math/MathML"
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]


# ---- hostile content --------------------------------------------------------------------------


HOSTILE = "\n".join([
    "<img src=x onerror=\"window.pwned=1;alert('img')\"> <script>window.pwned=2</script> onerror",
    "",
    "[click](javascript:alert('md')) [mixed](JaVaScRiPt:alert('case'))",
    "[spaced]( javascript:alert(1) )",
    "[entity](&#106;avascript:alert('entity')) [tab](java\tscript:alert(1)) "
    "[data](data:text/html,<script>alert('data')</script>) [vb](vbscript:msgbox(1))",
    "<javascript:alert('autolink')> <a href=\"javascript:alert('a')\">raw link</a>",
    "![pic](https://evil.example/x.png) <svg onload=\"window.pwned=3\"></svg> "
    "<iframe src=\"javascript:alert('iframe')\"></iframe> <object data=x></object>",
    "`<img src=x onerror=alert('code')>`",
    "",
    "```html",
    "<script>alert('fenced')</script>",
    "```",
    "",
    "[ok](https://example.com/safe) <https://example.com/auto> <mailto:a@example.com>",
])


INERT_CHECK = """() => {
  const root = document.getElementById("messages");
  const side = document.getElementById("sidebar");
  const bad = [];
  for (const el of [...root.querySelectorAll("*"), ...side.querySelectorAll("*")]) {
    const tag = el.tagName.toUpperCase();
    if (["IMG", "SCRIPT", "SVG", "IFRAME", "OBJECT", "EMBED", "STYLE", "FORM"].includes(tag))
      bad.push(tag);
    for (const a of el.attributes) {
      if (a.name.startsWith("on") || a.name === "style" || a.name === "srcdoc")
        bad.push(tag + "@" + a.name);
    }
  }
  const hrefs = [...root.querySelectorAll("a")].map((a) => a.getAttribute("href"));
  const rels = [...root.querySelectorAll(".body a")].map((a) => a.rel);
  return {bad, hrefs, rels, images: document.images.length, scripts: document.scripts.length};
}"""


async def assert_inert(page: Page) -> None:
    await page.wait_for_timeout(300)  # time for any onerror/onload to fire
    found = await page.evaluate(INERT_CHECK)
    assert found["bad"] == [], found
    assert found["images"] == 0 and found["scripts"] == 1  # only our own module
    safe = ("http://", "https://", "mailto:", "#/c/")
    assert all(h and h.startswith(safe) for h in found["hrefs"]), found["hrefs"]
    assert found["rels"] and all("noopener" in r and "noreferrer" in r for r in found["rels"])
    assert await page.evaluate("() => typeof window.pwned") == "undefined"


async def test_hostile_replies_and_messages_stay_inert(web: Web) -> None:
    page = web.page
    await web.user()
    await web.sim_config(echo=True)  # the reply is the user's hostile text, rendered as Markdown
    await web.open("/")
    await web.send(HOSTILE)
    await web.idle()
    user_body = messages(page, "user").last.locator(".body")
    assert await user_body.inner_text() == HOSTILE  # shown as typed, as text
    reply = messages(page, "assistant").last.locator(".body")
    await expect(reply.get_by_role("link", name="ok")).to_have_attribute(
        "href", "https://example.com/safe")
    await expect(reply).to_contain_text("<img src=x onerror=")
    await expect(reply.locator("pre code")).to_have_text("<script>alert('fenced')</script>\n")
    await expect(rows(page).first).to_contain_text("<img src=x onerror=")
    await expect(page.locator("#title")).to_contain_text("<img src=x")
    await assert_inert(page)
    # Search snippets are built from text too.
    await page.locator("#search").fill("onerror")
    await expect(page.locator("#result-list mark").first).to_have_text("onerror")
    await assert_inert(page)
    await page.locator("#search").press("Escape")
    # And the history the server renders after a reload.
    await page.reload()
    await expect(messages(page)).to_have_count(2)
    await expect(messages(page, "assistant").last.get_by_role("link", name="ok")).to_be_visible()
    await assert_inert(page)
    # The javascript: links never became links at all.
    for name in ("click", "mixed", "raw link"):
        link = messages(page, "assistant").last.get_by_role("link", name=name)
        assert await link.count() == 0
    assert web.watched.dialogs == []


# ---- copy, narrow screens, dark mode, screenshots ---------------------------------------------


async def test_copy_drawer_and_live_dark_mode(web: Web) -> None:
    page = web.page
    await web.user()
    await web.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=web.url)
    await web.sim_config(echo=True)
    await web.open("/")
    text = "Run this:\n\n```python\nprint('hi')\n```"
    await web.send(text)
    await web.idle()
    reply = messages(page, "assistant").last
    await reply.get_by_role("button", name="Copy reply as Markdown").click()
    assert await page.evaluate("() => navigator.clipboard.readText()") == text
    await reply.get_by_role("button", name="Copy code").click()
    assert await page.evaluate("() => navigator.clipboard.readText()") == "print('hi')\n"
    await expect(page.locator("#live")).to_contain_text("Copied")

    background = "() => getComputedStyle(document.body).backgroundColor"
    light = await page.evaluate(background)
    await page.emulate_media(color_scheme="dark")
    dark = await page.evaluate(background)
    assert light != dark, "the colour scheme follows the system setting without a reload"
    await page.emulate_media(color_scheme="light")

    await page.set_viewport_size({"width": 390, "height": 760})
    await expect(page.locator("#sidebar")).to_be_hidden()
    menu = page.get_by_role("button", name="Show conversations")
    await expect(menu).to_be_visible()
    await menu.click()
    await expect(page.locator("#sidebar")).to_be_visible()
    await expect(menu).to_have_attribute("aria-expanded", "true")
    await page.keyboard.press("Escape")
    await expect(page.locator("#sidebar")).to_be_hidden()
    await menu.click()
    await page.locator("#new-chat").click()
    await expect(page.locator("#sidebar")).to_be_hidden()
    box = await page.locator("#composer").bounding_box()
    assert box and box["y"] + box["height"] <= 760
    await web.axe()


# ---- code highlighting and math ----------------------------------------------------------------


RICH = ("Code:\n\n```python\ndef area(r):\n    return \"circle\"  # note\n```\n\n"
        "Inline $E=mc^2$ costs $5 and $10, and\n\n$$\n\\frac{a}{b}\n$$\n")
CODE_CSS_IN = "() => [...document.styleSheets].some((s) => s.href?.endsWith('/static/code.css'))"
COLOURS = """(reply) => Object.fromEntries(["k", "s2", "c1", "nf"].map((c) =>
  [c, getComputedStyle(reply.querySelector("pre.hl ." + c)).color]))"""


SELECT = """(el) => { const r = document.createRange(); r.selectNodeContents(el);
  getSelection().removeAllRanges(); getSelection().addRange(r); }"""


async def test_code_is_highlighted_light_and_dark_and_math_is_mathml(web: Web) -> None:
    page = web.page
    await web.user()
    await web.sim_config(echo=True)
    response = await page.goto("/")
    assert response is not None
    await expect(page.locator("#who")).not_to_be_empty()
    csp = response.headers["content-security-policy"]
    assert csp == CSP and "'unsafe-inline'" not in csp and "style-src 'self'" in csp
    await web.send(RICH)
    await web.idle()
    reply = messages(page, "assistant").last
    body = reply.locator(".body")
    code = body.locator("pre.hl code.language-python")
    await expect(code).to_have_text('def area(r):\n    return "circle"  # note\n')
    await expect(body.locator("[style]")).to_have_count(0)  # classes only, under the CSP
    await page.wait_for_function(CODE_CSS_IN)
    element = await body.element_handle()
    light = await page.evaluate(COLOURS, element)
    assert len(set(light.values())) == 4, light  # keyword, string, comment, name: all differ
    await page.emulate_media(color_scheme="dark")
    dark = await page.evaluate(COLOURS, element)
    assert len(set(dark.values())) == 4, dark
    assert all(light[c] != dark[c] for c in light), (light, dark)  # a theme of its own each
    await web.axe()  # token colours readable on the dark code block
    await page.emulate_media(color_scheme="light")
    await web.axe()
    # Math is MathML laid out by the browser, its LaTeX kept (not shown); prose dollars stay.
    maths = body.locator("math")
    await expect(maths).to_have_count(2)
    assert await maths.first.evaluate("(m) => m.namespaceURI") == MATHML
    assert await maths.nth(1).get_attribute("display") == "block"
    await expect(maths.first.locator("annotation")).to_have_text("E=mc^2")
    await expect(maths.first.locator("msup")).to_be_visible()
    box = await maths.nth(1).locator("mfrac").bounding_box()
    assert box and box["height"] > 20  # a real fraction: numerator over denominator
    await expect(body).to_contain_text("costs $5 and $10, and")
    # The source stays copyable: the reply's Copy gives the LaTeX as it was written, and so
    # does selecting a formula and copying it.
    await web.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=web.url)
    await reply.get_by_role("button", name="Copy reply as Markdown").click()
    assert await page.evaluate("() => navigator.clipboard.readText()") == RICH.rstrip()
    for element, copied in ((maths.first, "$E=mc^2$"), (maths.nth(1), "$$\\frac{a}{b}$$"),
                            (maths.first.locator(".."), "Inline $E=mc^2$ costs $5 and $10, and")):
        await element.evaluate(SELECT)
        await page.keyboard.press("Control+C")
        assert await page.evaluate("() => navigator.clipboard.readText()") == copied


SCREENSHOT_CHAT = [
    ("user", "How do I read a file line by line in Python without loading it all into memory?"),
    ("assistant", "Iterate over the file object: Python reads it lazily, one line at a time.\n\n"
     "```python\nwith open(\"server.log\", encoding=\"utf-8\") as f:\n    for line in f:\n"
     "        if \"ERROR\" in line:\n            print(line.rstrip())\n```\n\n"
     "A few things worth knowing:\n\n- `with` closes the file even if an exception is raised.\n"
     "- Each `line` keeps its trailing newline; `rstrip()` drops it.\n"
     "- For huge files this uses **constant memory**, however large the file is.\n\n"
     "See the [tutorial](https://docs.python.org/3/tutorial/inputoutput.html) for more."),
    ("user", "And if I only need the last 10 lines?"),
    ("assistant", "Use a `deque` with `maxlen=10`; it keeps only the newest items:\n\n"
     "```python\nfrom collections import deque\n\nwith open(\"server.log\") as f:\n"
     "    tail = deque(f, maxlen=10)\n```"),
]


async def test_screenshots_light_and_dark(web: Web, tmp_path: Path) -> None:
    """Renders the chat view light and dark; CHATGATE_SCREENSHOTS=1 refreshes docs/ with them."""
    out = ROOT / "docs" if os.environ.get("CHATGATE_SCREENSHOTS") == "1" else tmp_path
    page = web.page
    await web.user(login=False)  # run alone, the first user would be an admin (and say so)
    user = await web.user(name="ada")
    for title in ("Trip ideas for the Alps", "Explain SQLite WAL mode", "Regex for ISO dates"):
        await web.chat(user, title)
    uid, now = user["user"]["id"], "2030-01-01T00:00:00.000Z"

    def seed(conn: Any) -> int:  # a hand-written exchange, so the picture shows real Markdown
        conv = int(conn.execute(
            "INSERT INTO conversations (user_id, title, created_at, updated_at) "
            "VALUES (?, ?, ?, ?)", (uid, "Reading a file line by line", now, now)).lastrowid)
        parent = None
        for role, text in SCREENSHOT_CHAT:  # each under the one before: one branch
            parent = conn.execute(
                "INSERT INTO messages (conversation_id, role, content, created_at, parent_id) "
                "VALUES (?, ?, ?, ?, ?)", (conv, role, text, now, parent)).lastrowid
        return conv

    conv = await web.app.app[keys.STORAGE].db.write(seed)
    await page.set_viewport_size({"width": 1280, "height": 860})
    await web.open(f"/#/c/{conv}")
    await expect(messages(page)).to_have_count(4)
    await page.wait_for_function(CODE_CSS_IN)  # the code in its colours
    await page.locator("#input").fill("Thanks! Can it also follow the file as it grows?")
    await page.locator("#input").blur()
    await page.screenshot(path=str(out / "screenshot-light.png"))
    await page.emulate_media(color_scheme="dark")
    await page.screenshot(path=str(out / "screenshot-dark.png"))
    for name in ("screenshot-light.png", "screenshot-dark.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
