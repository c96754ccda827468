"""server/services/render.py: Markdown to HTML, sanitised after conversion."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from server.services.render import render, render_async

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


def test_markdown_renders_and_links_are_safe() -> None:
    html = render("**bold** `code` [site](https://example.org) [mail](mailto:a@b.c)\n\n"
                  "```python\nprint(1)\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |")
    assert "<strong>bold</strong>" in html and "<code>code</code>" in html
    assert '<a href="https://example.org" target="_blank" rel="noopener noreferrer">' in html
    assert 'href="mailto:a@b.c"' in html
    assert '<pre><code class="language-python">print(1)' in html and "<table>" in html


async def test_long_conversations_render_off_the_loop() -> None:
    texts = ["# title\n\n" + "word " * 2000] * 3
    assert await render_async(texts) == [render(t) for t in texts]
