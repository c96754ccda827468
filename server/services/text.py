"""Text shown to people as a label (conversation titles): no invisible format characters."""

from __future__ import annotations

import re

# Bidi embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069) and marks (U+200E,
# U+200F, U+061C) make a title display other than it reads ("txt.exe" shown as "exe.txt");
# zero-width spaces, word joiner, invisible operators, BOM, soft hyphen, Hangul and
# Mongolian fillers and tag characters hide text. ZWJ/ZWNJ (U+200C/D) and variation
# selectors stay: emoji and several scripts need them. Control characters go too.
_INVISIBLE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e"
    "\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\u3164\ufeff\uffa0"
    "\U000e0000-\U000e007f]")
_SPACES = re.compile(r"[\t\n\r\u2028\u2029]")


def visible(text: str) -> str:
    """The text without invisible format characters; line breaks become spaces; trimmed."""
    return _INVISIBLE.sub("", _SPACES.sub(" ", text)).strip()
