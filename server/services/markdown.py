"""One message's Markdown to safe HTML: fences highlighted by Pygments, `$` math as MathML.

markdown-it-py parses with raw HTML off; code fences in a language Pygments knows become
`<pre class="hl">` with class-only token spans (server/static/code.css colours them, light and
dark); `$...$` and `$$...$$` become MathML with the LaTeX kept in an annotation. nh3 then
cleans everything with an allow-list, so neither library's output is trusted as such.
"""

from __future__ import annotations

import html
import time
from functools import lru_cache
from math import inf
from xml.etree.ElementTree import Element, SubElement, tostring

import nh3
from latex2mathml.converter import convert_to_element
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.renderer import RendererProtocol
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict
from mdit_py_plugins.dollarmath import dollarmath_plugin
from pygments import highlight as pygments_highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import get_lexer_by_name
from pygments.lexers.special import TextLexer
from pygments.token import STANDARD_TYPES
from pygments.util import ClassNotFound

_TAGS = {
    "p", "br", "hr", "em", "strong", "del", "s", "code", "pre", "blockquote", "ul", "ol", "li",
    "h1", "h2", "h3", "h4", "h5", "h6", "a", "table", "thead", "tbody", "tr", "th", "td", "span",
}
# MathML that latex2mathml writes and browsers lay out; none of it takes a URL.
MATH_TAGS = {
    "math", "mi", "mn", "mo", "ms", "mtext", "mrow", "mfrac", "msqrt", "mroot", "msub", "msup",
    "msubsup", "munder", "mover", "munderover", "mtable", "mtr", "mtd", "mspace", "mstyle",
    "semantics", "annotation", "mpadded", "mphantom", "menclose",
}
_MATH_ATTRIBUTES = {
    "math": {"display"}, "annotation": {"encoding"},
    "mi": {"mathvariant"}, "mn": {"mathvariant"}, "mtext": {"mathvariant"},
    "mo": {"stretchy", "fence", "form", "separator", "lspace", "rspace", "largeop",
           "movablelimits", "symmetric", "minsize", "maxsize", "accent"},
    "mfrac": {"linethickness"}, "mover": {"accent"}, "munder": {"accentunder"},
    "munderover": {"accent", "accentunder"},
    "mstyle": {"displaystyle", "scriptlevel", "mathvariant", "mathcolor", "mathsize"},
    "mtable": {"columnalign", "rowspacing", "columnspacing", "columnlines", "rowlines",
               "displaystyle"},
    "mtd": {"columnalign", "columnspan", "rowspan"},
    "mspace": {"width", "height", "depth"}, "mpadded": {"width", "height", "depth", "lspace",
                                                        "voffset"},
    "menclose": {"notation"},
}
# No style attributes: the Content-Security-Policy forbids inline styles anyway. Classes are
# only Pygments' token classes on spans and `hl` on a highlighted block.
_ATTRIBUTES = {"a": {"href", "title"}, "code": {"class"}, "ol": {"start"}, **_MATH_ATTRIBUTES}
_CLASSES = {"pre": {"hl"}, "span": {c for c in STANDARD_TYPES.values() if c}}
_TEX = "application/x-tex"
_FORMATTER = HtmlFormatter(nowrap=True)  # class spans only, no inline styles, no wrapper
# The process time after which fences stay plain and formulas show their source: the rest of
# a reply that took long still renders within its CPU allowance instead of failing whole.
_rich_until = [inf]


def _in_time() -> bool:
    return time.process_time() < _rich_until[0]


@lru_cache(maxsize=256)
def _lexer(language: str) -> Lexer | None:
    """Pygments' lexer for a fence's language, or None for plain text."""
    try:
        lexer = get_lexer_by_name(language, stripnl=False, stripall=False)
    except ClassNotFound:
        return None
    return None if isinstance(lexer, TextLexer) else lexer


def _highlight(code: str, language: str, attrs: str) -> str:
    """A fence in a known language as `<pre class="hl">` with token spans; "" leaves it plain."""
    lexer = _lexer(language.lower()) if language and _in_time() else None
    if lexer is None:
        return ""
    spans = pygments_highlight(code, lexer, _FORMATTER)
    return (f'<pre class="hl"><code class="language-{escapeHtml(language)}">'
            f"{spans}</code></pre>")


def _math(latex: str, display: bool, block: bool = False) -> str:
    """MathML for one formula with its LaTeX as an annotation; its source as code if malformed."""
    try:
        if not _in_time():
            raise TimeoutError("out of time for math")
        tree = convert_to_element(latex, display="block" if display else "inline")
    except Exception:  # noqa: BLE001 - latex2mathml raises many kinds on malformed input
        source = escapeHtml(f"$${latex}$$" if display else f"${latex}$")
        return f"<pre><code>{source}</code></pre>" if block else f"<code>{source}</code>"
    # latex2mathml keeps entities as text ("&#x0003C;") and unescapes its serialised output,
    # which would turn `\text{<b>}` into markup: decode each text here and let tostring escape.
    for node in tree.iter():
        node.text = html.unescape(node.text) if node.text else node.text
        node.tail = html.unescape(node.tail) if node.tail else node.tail
        node.attrib = {k: html.unescape(v) for k, v in node.attrib.items()}
    math = Element("math", {"display": "block" if display else "inline"})
    semantics = SubElement(math, "semantics")
    semantics.extend(list(tree))
    SubElement(semantics, "annotation", {"encoding": _TEX}).text = latex.strip()
    return tostring(math, encoding="unicode", short_empty_elements=False)


def _math_inline(self: RendererProtocol, tokens: list[Token], idx: int, options: OptionsDict,
                 env: EnvType) -> str:
    """`$...$` in a paragraph: inline math."""
    return _math(tokens[idx].content, display=False)


def _math_display(self: RendererProtocol, tokens: list[Token], idx: int, options: OptionsDict,
                  env: EnvType) -> str:
    """`$$...$$` in a paragraph: display math."""
    return _math(tokens[idx].content, display=True)


def _math_block(self: RendererProtocol, tokens: list[Token], idx: int, options: OptionsDict,
                env: EnvType) -> str:
    """`$$...$$` on lines of its own: display math as a block."""
    return _math(tokens[idx].content, display=True, block=True) + "\n"


def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False,
                                   "highlight": _highlight}).enable(["table", "strikethrough"])
    # No space inside the dollars and no digit outside them: "$5 and $10" stays prose.
    md.use(dollarmath_plugin, allow_labels=False, allow_space=False, allow_digits=False,
           allow_blank_lines=False, double_inline=True)
    md.add_render_rule("math_inline", _math_inline)
    md.add_render_rule("math_inline_double", _math_display)
    md.add_render_rule("math_block", _math_block)
    return md


_MD = _markdown()


def render(markdown: str, rich_cpu_s: float = inf) -> str:
    """Sanitised HTML for one message: no raw HTML, no images, only http/https/mailto links.

    Highlighting and math stop after `rich_cpu_s` of CPU time (later fences plain, formulas
    as their source).
    """
    _rich_until[0] = time.process_time() + rich_cpu_s
    try:
        markup = _MD.render(markdown)
    finally:
        _rich_until[0] = inf
    return nh3.clean(markup, tags=_TAGS | MATH_TAGS, attributes=_ATTRIBUTES,
                     allowed_classes=_CLASSES, url_schemes={"http", "https", "mailto"},
                     link_rel="noopener noreferrer", strip_comments=True,
                     set_tag_attribute_values={"a": {"target": "_blank"}})


def warm_up() -> None:
    """Import the lexers replies use most, so their first use is not counted in a reply's time."""
    for language in ("python", "javascript", "typescript", "bash", "json", "html", "css", "c",
                     "cpp", "java", "go", "rust", "sql", "yaml"):
        _lexer(language)
    render("$x^2$ `a`\n\n```python\nx = 1\n```\n")
