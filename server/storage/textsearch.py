"""Search text handling both backends share: the query's words, ranking in Python, and the
snippet with its highlights (FTS5's `snippet()`, reproduced for backends without it)."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

WORD = re.compile(r"\w+", re.UNICODE)
# A token as SQLite's unicode61 tokenizer cuts text: letters and digits, no underscore. (Its
# tables are older than Python's: a symbol or emoji that Unicode added since is part of a word
# there, a separator here.)
_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)
OPEN, CLOSE = "\x02", "\x03"
_MARKS = re.compile("([\x02\x03])")
ELLIPSIS = "…"
SNIPPET_TOKENS = 16
MAX_WORDS = 32
# Matches ranked per search at most: the newest ones. A user's search then costs the same
# whether they have a hundred matching messages or a hundred thousand.
CANDIDATES = 200


def query_words(text: str) -> list[str]:
    """The words of any user text that a search uses (at most MAX_WORDS)."""
    return WORD.findall(text)[:MAX_WORDS]


def prefix_last(words: list[str]) -> bool:
    """Whether the last word also matches as a prefix: from two letters on (one letter would
    match nearly everything)."""
    return bool(words) and len(words[-1]) >= 2


def plain(text: str) -> str:
    """Text without diacritics, as the index's tokenizer (remove_diacritics 2) folds them."""
    if text.isascii():  # nothing to fold, and the usual case
        return text
    return "".join(c for c in unicodedata.normalize("NFKD", text)
                   if not unicodedata.combining(c))


def rank(rows: list[Any], text: str) -> list[Any]:
    """(rowid, content) rows best first: BM25 over the query's words (k1 1.2, b 0.75) within
    these rows. Every row holds every word (the query is an AND), so a word's rarity across
    the whole index would weigh all of them alike: it is left out. Ties: newest first."""
    words = WORD.findall(plain(text.casefold()))[:MAX_WORDS]
    if not words or not rows:
        return rows
    prefix = words[-1] if len(words[-1]) >= 2 else None  # as the query makes it a prefix
    tokens = [WORD.findall(plain((row[1] or "").casefold())) for row in rows]
    average = max(1.0, sum(len(t) for t in tokens) / len(tokens))
    exact = set(words[:-1] if prefix else words)

    def score(row_tokens: list[str]) -> float:
        norm = 1.2 * (0.25 + 0.75 * len(row_tokens) / average)
        total = 0.0
        for word in exact:
            f = row_tokens.count(word)
            total += f * 2.2 / (f + norm)
        if prefix is not None:
            # Tokens starting with the prefix: occurrences of " prefix" in " tok tok ...".
            f = (" " + " ".join(row_tokens)).count(" " + prefix)
            total += f * 2.2 / (f + norm)
        return total

    scored = sorted(zip(rows, tokens, strict=True), key=lambda rt: (-score(rt[1]), -rt[0][0]))
    return [row for row, _ in scored]


def highlights(marked: str) -> tuple[str, list[list[int]]]:
    """Strip the match markers; return plain text and [start, end) spans of the matches."""
    text: list[str] = []
    spans: list[list[int]] = []
    pos = 0
    start = -1
    for part in _MARKS.split(marked):
        if part == OPEN:
            start = pos
        elif part == CLOSE and start >= 0:
            spans.append([start, pos])
            start = -1
        else:  # text, or a CLOSE with nothing open (kept as a character)
            text.append(part)
            pos += len(part)
    return "".join(text), spans


def _fold(token: str) -> str:
    return plain(token.casefold())


def _instances(folded: list[str], text: str) -> list[tuple[int, int, int]]:
    """Every (position, phrase, length) where a phrase of the query matches the (folded)
    tokens, by position: each query word is a phrase of its tokens, the last one's last token
    a prefix."""
    words = query_words(text)
    phrases = [[_fold(t) for t in _TOKEN.findall(w)] for w in words]
    prefix = prefix_last(words)
    found: list[tuple[int, int, int]] = []
    for number, phrase in enumerate(phrases):
        if not phrase:
            continue
        last = number == len(phrases) - 1 and prefix
        size = len(phrase)
        head, tail = phrase[0], phrase[-1]
        for at in range(len(folded) - size + 1):
            if size == 1:
                token = folded[at]
                if token == head or (last and token.startswith(head)):
                    found.append((at, number, 1))
                continue
            if folded[at] != head or folded[at + 1:at + size - 1] != phrase[1:-1]:
                continue
            end = folded[at + size - 1]
            if end.startswith(tail) if last else end == tail:
                found.append((at, number, size))
    found.sort()
    return found


def _score(instances: list[tuple[int, int, int]], start: int, count: int, size: int
           ) -> tuple[int, int]:
    """FTS5's fragment score of the `count` tokens from `start` (1000 for each phrase seen
    first, 1 for each repeat) and where it centres the fragment on them."""
    seen: set[int] = set()
    score, first, last = 0, -1, 0
    for at, phrase, length in instances:
        if start <= at < start + count:
            score += 1 if phrase in seen else 1000
            seen.add(phrase)
            if first < 0:
                first = at
            last = at + length
    adjusted = first - int((count - (last - first)) / 2)  # C's division: towards zero
    adjusted = min(adjusted, size - count)
    return score, max(adjusted, 0)


def snippet(content: str, text: str, tokens: int = SNIPPET_TOKENS) -> str:
    """The best fragment of `content` for the query `text`, its matches between OPEN and
    CLOSE, cut with ELLIPSIS: what FTS5's snippet(..., OPEN, CLOSE, ELLIPSIS, tokens) gives."""
    spans = [m.span() for m in _TOKEN.finditer(content)]
    lowered = content.lower() if content.isascii() else None  # folds ASCII in one go
    folded = [lowered[s:e] for s, e in spans] if lowered is not None else \
        [_fold(content[s:e]) for s, e in spans]
    instances = _instances(folded, text)
    size = len(spans)
    # Sentence starts: the first token and any after '.' or ':' and whitespace.
    firsts = [0] if spans else []
    for n in range(1, size):
        before = content[spans[n - 1][1]:spans[n][0]].rstrip(" \t\n\r")
        gap = content[spans[n - 1][1]:spans[n][0]]
        if before != gap and before.endswith((".", ":")):
            firsts.append(n)
    best_score, best_start = -1, 0
    for at, _, _ in instances:
        score, adjusted = _score(instances, at, tokens, size)
        if score > best_score:
            best_score, best_start = score, adjusted
        if firsts and size > tokens:
            j = 0
            while j < len(firsts) - 1 and firsts[j + 1] <= at:
                j += 1
            if firsts[j] < at:
                score, _ = _score(instances, firsts[j], tokens, size)
                score += 120 if firsts[j] == 0 else 100
                if score > best_score:
                    best_score, best_start = score, firsts[j]
    return _render(content, spans, instances, best_start, best_start + tokens - 1)


def _render(content: str, spans: list[tuple[int, int]], instances: list[tuple[int, int, int]],
            first: int, last: int) -> str:
    """The tokens first..last with their matches marked (runs of overlapping ones as one),
    the text before the first token if it starts the content, after the last if it ends it."""
    runs: list[list[int]] = []
    for at, _, length in instances:
        end = at + length - 1
        if runs and at <= runs[-1][1]:
            runs[-1][1] = max(runs[-1][1], end)
        else:
            runs.append([at, end])
    out: list[str] = [ELLIPSIS] if first > 0 else []
    offset = 0  # how far the content is copied
    opened = False
    run = 0
    while run < len(runs) and runs[run][0] < first:
        run += 1
    for pos, (start, end) in enumerate(spans):
        if pos < first or pos > last:
            continue
        if first and pos == first:
            offset = start
        current = runs[run] if run < len(runs) else None
        if opened and (current is None or pos <= current[0]) and start > offset:
            out.append(CLOSE)
            opened = False
        if current is not None and pos == current[0] and not opened:
            out.append(content[offset:start])
            out.append(OPEN)
            offset = start
            opened = True
        if current is not None and pos == current[1]:
            if not opened:
                out.append(OPEN)
                opened = True
            out.append(content[offset:end])
            offset = end
            run += 1
        if pos == last:
            current = runs[run] if run < len(runs) else None
            if opened:
                if current is not None and pos >= current[0]:
                    out.append(content[offset:end])
                    offset = end
                out.append(CLOSE)
                opened = False
            out.append(content[offset:end])
            offset = end
    if opened:
        out.append(CLOSE)
    if last >= len(spans) - 1:
        out.append(content[offset:])
    else:
        out.append(ELLIPSIS)
    return "".join(out)
