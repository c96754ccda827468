"""Markdown to safe HTML: markdown-it-py with raw HTML off, then nh3 sanitising the result."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import nh3
from markdown_it import MarkdownIt

_MD = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}) \
    .enable(["table", "strikethrough"])
_TAGS = {
    "p", "br", "hr", "em", "strong", "del", "s", "code", "pre", "blockquote", "ul", "ol", "li",
    "h1", "h2", "h3", "h4", "h5", "h6", "a", "table", "thead", "tbody", "tr", "th", "td",
}
# No style attributes: the Content-Security-Policy forbids inline styles anyway.
_ATTRIBUTES = {"a": {"href", "title"}, "code": {"class"}, "ol": {"start"}}


def render(markdown: str) -> str:
    """Sanitised HTML for one message: no raw HTML, no images, only http/https/mailto links."""
    html = _MD.render(markdown)
    return nh3.clean(html, tags=_TAGS, attributes=_ATTRIBUTES,
                     url_schemes={"http", "https", "mailto"},
                     link_rel="noopener noreferrer", strip_comments=True,
                     set_tag_attribute_values={"a": {"target": "_blank"}})


def render_all(texts: Iterable[str]) -> list[str]:
    """Render several messages (call through render_async for long conversations)."""
    return [render(t) for t in texts]


async def render_async(texts: list[str]) -> list[str]:
    """Render off the event loop: Markdown parsing is CPU work."""
    if sum(len(t) for t in texts) < 4096:
        return render_all(texts)  # cheaper than a thread hop
    return await asyncio.to_thread(render_all, texts)
