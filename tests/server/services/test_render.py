"""server/services/render.py: Markdown to HTML, sanitised after conversion."""

from __future__ import annotations

import asyncio
import os
import signal
from html.parser import HTMLParser
from pathlib import Path

import pytest

from server.config import RenderConfig
from server.services import code_css
from server.services.markdown import MATH_TAGS
from server.services.render import _ENTRY_OVERHEAD, Renderer, _FairJobs, _HtmlCache, _Job, render

SAFE_TAGS = {"p", "a", "em", "strong", "code", "pre", "ul", "ol", "li", "br", "hr", "del",
             "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr",
             "th", "td", "s"}


def elements(html: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """Every start tag in the HTML with its attributes."""
    found: list[tuple[str, list[tuple[str, str | None]]]] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.append((tag, attrs))

    Collect().feed(html)
    return found


@pytest.mark.parametrize("hostile", [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "[x](javascript:alert(1))",
    "[x](JaVaScRiPt:alert(1))",
    "[x](  javascript:alert(1))",
    "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "<javascript:alert(1)>",
    "![img](https://evil.example/pixel.png)",
    "<iframe src=https://evil.example></iframe>",
    '<a href="javascript:alert(1)">x</a>',
    "[x](vbscript:msgbox(1))",
    '<div style="background:url(javascript:alert(1))">x</div>',
])
def test_hostile_markdown_is_inert(hostile: str) -> None:
    """Whatever the input, the output's elements are harmless (the rest is escaped text)."""
    for tag, attrs in elements(render(hostile)):
        assert tag in SAFE_TAGS, (hostile, tag)
        for name, value in attrs:
            assert not name.startswith("on") and name != "style", (hostile, name)
            if name == "href":
                assert (value or "").startswith(("https://", "http://", "mailto:")), value


def text_of(html: str) -> str:
    """The text a reader sees (and copies) from the HTML."""
    parts: list[str] = []

    class Text(HTMLParser):
        def handle_data(self, data: str) -> None:
            parts.append(data)

    Text().feed(html)
    return "".join(parts)


def test_fences_are_highlighted_with_classes_only() -> None:
    source = 'def f(x):\n    return "<b>" + x  # note\n'
    html = render(f"```python\n{source}```")
    assert html.startswith('<pre class="hl"><code class="language-python">')
    spans = [dict(attrs) for tag, attrs in elements(html) if tag == "span"]
    classes = {span["class"] for span in spans}
    assert {"k", "nf", "s2", "c1"} <= classes, classes  # keyword, function, string, comment
    assert all(set(span) == {"class"} for span in spans)  # no style, nothing else
    assert text_of(html) == source + "\n"  # the code unchanged (for Copy code), then a newline
    for markdown in ("```\nx = 1\n```", "```nolang\nx = 1\n```", "```text\nx = 1\n```"):
        plain = render(markdown)  # no language or one Pygments does not know: as before
        assert "<span" not in plain and 'class="hl"' not in plain and "x = 1\n" in plain


def test_the_code_stylesheet_is_what_its_generator_writes() -> None:
    """server/static/code.css is generated (python -m server.services.code_css): never edit
    it by hand."""
    assert code_css.OUT.read_text() == code_css.stylesheet()


@pytest.mark.parametrize("hostile", [
    "```html\n<script>alert(1)</script><img src=x onerror=alert(1)>\n```",
    '```js" onmouseover="alert(1)\nx\n```',
    "```python\n</code></pre><script>alert(1)</script>\n```",
    "$\\text{<script>alert(1)</script>}$",
    "$\\text{<img src=x onerror=alert(1)>}$",
    "$\\href{javascript:alert(1)}{x}$",
    "$$\n\\href{javascript:alert(1)}{x} <svg onload=alert(1)>\n$$",
    "$x$ <math><mi href=javascript:alert(1)>y</mi></math>",
    "$\\color{red\" onclick=\"alert(1)}{x}$",
    "$\\mathrm{</math><script>alert(1)</script>}$",
])
def test_hostile_code_and_math_are_inert(hostile: str) -> None:
    """Markup inside fences and formulas is text: only safe elements, no handlers, no href."""
    for tag, attrs in elements(render(hostile)):
        assert tag in SAFE_TAGS | MATH_TAGS | {"span"}, (hostile, tag)
        for name, _ in attrs:
            assert not name.startswith("on") and name not in {"style", "href", "src"}, (
                hostile, name)
            if name == "class":
                assert tag in {"span", "pre", "code"}, (hostile, tag)


def test_math_becomes_mathml_with_its_source() -> None:
    html = render("Energy: $E=mc^2$.\n\n$$\n\\frac{a}{b} < \\sqrt{x}\n$$\n")
    assert '<math display="inline"><semantics><mrow><mi>E</mi><mo>=</mo>' in html
    assert "<msup><mi>c</mi><mn>2</mn></msup>" in html
    assert '<math display="block"><semantics>' in html and "<mfrac>" in html
    assert "<msqrt>" in html and "<mo>&lt;</mo>" in html
    # The LaTeX stays in the page for copying, as the annotation browsers do not display.
    assert '<annotation encoding="application/x-tex">E=mc^2</annotation>' in html
    assert '<annotation encoding="application/x-tex">\\frac{a}{b} &lt; \\sqrt{x}' in html


def test_malformed_math_is_shown_as_its_source() -> None:
    html = render("before $\\frac{1}{$ after\n\n$$\n\\frac{\n$$\n\nend **ok**")
    assert "<math" not in html
    assert "<p>before <code>$\\frac{1}{$</code> after</p>" in html
    assert "<pre><code>$$\n\\frac{\n$$</code></pre>" in html
    assert "<strong>ok</strong>" in html  # the rest of the reply is rendered as usual


def test_past_its_cpu_share_a_reply_renders_plain_instead_of_failing() -> None:
    markdown = "**a** $x^2$\n\n```python\nx = 1\n```\n"
    assert "<math" in render(markdown) and "<span" in render(markdown)
    html = render(markdown, rich_cpu_s=0)
    assert "<strong>a</strong> <code>$x^2$</code>" in html  # the formula as its source
    assert '<pre><code class="language-python">x = 1\n</code></pre>' in html  # plain code


@pytest.mark.parametrize("prose", [
    "It costs $5 and $10 at most.",
    "Between $5 and $10.",
    "Pay $ 5 or $ 10.",
    "A $ sign, then another $ sign.",
    "Shell: echo $HOME and $PATH",
])
def test_dollars_in_prose_stay_text(prose: str) -> None:
    html = render(prose)
    assert "<math" not in html and text_of(html).strip() == prose, html


def test_markdown_renders_and_links_are_safe() -> None:
    html = render("**bold** `code` [site](https://example.org) [mail](mailto:a@b.c)\n\n"
                  "```python\nprint(1)\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |")
    assert "<strong>bold</strong>" in html and "<code>code</code>" in html
    assert '<a href="https://example.org" target="_blank" rel="noopener noreferrer">' in html
    assert 'href="mailto:a@b.c"' in html
    assert '<pre class="hl"><code class="language-python"><span class="nb">print</span>' in html
    assert "<table>" in html


def test_cache_drops_the_least_recently_used_beyond_its_bound() -> None:
    cache = _HtmlCache(max_chars=3 * (100 + _ENTRY_OVERHEAD))
    for message_id in (1, 2, 3):
        cache.put(message_id, 7, "x" * 100)
    assert cache.get(1, 7) == (True, "x" * 100)  # 1 is now the most recently used
    cache.put(4, 7, "y" * 100)
    assert [cache.get(n, 7)[0] for n in (1, 2, 3, 4)] == [True, False, True, True]
    cache.put(5, 7, "z" * 10_000)  # larger than the whole cache: not kept, nothing dropped
    assert cache.get(5, 7) == (False, None) and cache.get(1, 7)[0]
    assert cache.get(1, 8) == (False, None)  # same id, other content: not this entry
    cache.put(6, 7, None)  # an abandoned render is remembered as such
    assert cache.get(6, 7) == (True, None)


async def test_renderer_renders_once_and_again_only_when_the_text_changes() -> None:
    renderer = Renderer(RenderConfig(wait_s=60, max_render_cpu_s=60))
    try:
        replies = [(1, "**a**"), (2, "`b`")]
        for _ in range(3):
            assert await renderer.html(9, replies) == [render("**a**"), render("`b`")]
        assert renderer.stats.rendered == 2 and renderer.stats.cache_hits == 4
        assert await renderer.one(9, 2, "*changed*") == render("*changed*")
        assert renderer.stats.rendered == 3
    finally:
        await renderer.close()


async def test_renderer_declines_what_is_over_its_caps() -> None:
    renderer = Renderer(RenderConfig(wait_s=60, max_render_cpu_s=60, max_reply_chars=10,
                                     max_chars_per_request=15, max_pending_chars=100))
    try:
        replies = [(1, "x" * 11), (2, "y" * 8), (3, "z" * 8)]
        assert await renderer.html(9, replies) == [None, None, render("z" * 8)]
        assert renderer.stats.skipped == 2 and renderer.stats.rendered == 1
    finally:
        await renderer.close()


async def test_a_reply_too_slow_to_render_is_given_up_once() -> None:
    renderer = Renderer(RenderConfig(wait_s=60, max_render_cpu_s=0.2))
    try:
        slow = "![" * 50000  # seconds of CPU to parse on any machine
        for _ in range(3):
            assert await renderer.one(9, 1, slow) is None
        assert renderer.stats.failed == 1 and renderer.stats.cache_hits == 2
        assert await renderer.one(9, 2, "**fine**") == render("**fine**")
    finally:
        await renderer.close()


async def test_waiting_replies_are_served_round_robin_across_users() -> None:
    jobs = _FairJobs()
    loop = asyncio.get_running_loop()

    def put(owner: int, message_id: int) -> None:
        jobs.put(_Job(owner, message_id, 0, "", loop.create_future()))

    for message_id in (1, 2, 3, 4):
        put(1, message_id)  # one user's backlog
    assert (await jobs.get()).message_id == 1
    put(2, 5)
    put(2, 6)
    assert (await jobs.get()).message_id == 5  # a newcomer goes first, then turns alternate
    put(3, 7)
    assert [(await jobs.get()).message_id for _ in range(5)] == [7, 2, 6, 3, 4]


async def test_one_user_may_have_only_one_requests_worth_waiting() -> None:
    renderer = Renderer(RenderConfig(wait_s=60, max_render_cpu_s=60, max_chars_per_request=10))
    try:
        # Started together: the second request of user 1 finds 8 characters of theirs waiting.
        first, second, other = await asyncio.gather(
            renderer.html(1, [(1, "a" * 8)]), renderer.html(1, [(2, "b" * 8)]),
            renderer.html(2, [(3, "c" * 8)]))
        assert (first, second, other) == ([render("a" * 8)], [None], [render("c" * 8)])
        assert await renderer.html(1, [(2, "b" * 8)]) == [render("b" * 8)]  # the backlog left
    finally:
        await renderer.close()


def test_a_replys_cpu_time_is_its_lengths_share_with_a_floor() -> None:
    renderer = Renderer(RenderConfig(max_render_cpu_s=1, max_reply_chars=100_000))
    assert renderer._cpu_s(100_000) == 1 and renderer._cpu_s(50_000) == 0.5
    assert renderer._cpu_s(10) == 0.1  # however short


def render_processes() -> list[int]:
    """This process's render children."""
    me = os.getpid()
    found = Path(f"/proc/{me}/task/{me}/children").read_text().split()
    return [int(pid) for pid in found
            if b"server.services.render" in Path(f"/proc/{pid}/cmdline").read_bytes()]


async def test_a_render_process_that_died_is_replaced_for_the_next_reply() -> None:
    renderer = Renderer(RenderConfig(wait_s=60, max_render_cpu_s=60))
    try:
        assert await renderer.one(9, 1, "**a**") == render("**a**")
        [pid] = render_processes()
        os.kill(pid, signal.SIGKILL)
        while Path(f"/proc/{pid}").exists():  # until the event loop has reaped it
            await asyncio.sleep(0.01)
        assert await renderer.one(9, 2, "**b**") == render("**b**")
        assert render_processes() != [pid] and renderer.stats.failed == 0
    finally:
        await renderer.close()
    assert render_processes() == []
