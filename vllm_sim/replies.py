"""Reply synthesis: padded summaries, canned demo answers in Markdown, plausible logprobs."""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import orjson

from .engine import text_of
from .settings import SimSettings

_PAD_WORDS = (
    "simulated", "tokens", "stream", "from", "a", "fake", "model", "with",
    "no", "gpu", "the", "gateway", "sees", "steady", "words", "and", "timing",
)  # fmt: skip
# Alternatives offered in top_logprobs: more than MAX_LOGPROBS words, so any k fits.
_VOCAB = (*_PAD_WORDS, "reply", "token", "answer", "output", "text", "word", "here")
Message = dict[str, Any]

DEMO_MARKER = "*(simulated reply)*"
_CODE_RE = re.compile(r"```|\b(code|python|function|script|program|snippet|implement\w*|regex)\b")
_TABLE_RE = re.compile(r"\b(table|compare|comparison|versus|vs)\b")
_LIST_RE = re.compile(r"\b(list|steps?|checklist|how to)\b")
_DEMO_CODE = '''Here is a small, self-contained example in Python:

```python
def greet(name: str) -> str:
    """Return a friendly greeting."""
    return f"Hello, {name}!"


print(greet("world"))
```

Call `greet()` with any name; it returns the greeting as a string.'''
_DEMO_TABLE = """Here is a quick comparison:

| Structure | Lookup | Order kept | Best for |
| --- | --- | --- | --- |
| `list` | slow (scan) | yes | ordered items |
| `set` | fast (hash) | no | unique items |
| `dict` | fast (hash) | yes | key → value pairs |

In short, **pick the structure that matches how you read the data.**"""
_DEMO_LIST = """Here are the steps:

1. **Describe** what you want to achieve.
2. **Split** it into small pieces you can check one by one.
3. **Try** each piece and look at the result.
4. **Tidy up** and write down what you learned.

Repeat as needed."""


def _users(messages: list[Message]) -> list[Message]:
    return [m for m in messages if m.get("role") == "user"]


def _words(text: str, limit: int) -> str:
    return " ".join(text.split()[:limit])


def synth_reply(
    messages: list[Message], n_tokens: int, seed: int | None = None, variant: int = 0
) -> str:
    """Deterministic reply derived from the conversation, the seed and the choice index."""
    users = _users(messages)
    last = text_of((users or messages)[-1].get("content"))
    words = ["Simulated", "reply", str(max(len(users), 1)), "to:"]
    words += last.split()[:8] or ["(empty)"]
    if len(users) > 1:  # show that the history arrived: quote the conversation's first message
        first = text_of(users[0].get("content")).split()[:8]
        words += ["—", "you", "first", "said:", *first, "—"]
    key = orjson.dumps(messages, option=orjson.OPT_SORT_KEYS)
    if seed is not None or variant:  # unseeded first choice keeps its historical text
        key += orjson.dumps([seed, variant])
    rng = random.Random(hashlib.sha256(key).digest())
    while len(words) < n_tokens:
        words.append(rng.choice(_PAD_WORDS))
    return " ".join(words[:n_tokens])


def demo_title(text: str) -> str:
    """A short title for a request that asks for one: the first words of the conversation it
    quotes ("User: ..."), else of the request itself."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    quoted = [ln.split(":", 1)[1] for ln in lines if ln.lower().startswith("user:")]
    words = _words((quoted or lines or ["Simulated chat"])[0], 6).rstrip(".?!:;,")
    return words[:1].upper() + words[1:] if words else "Simulated chat"


def demo_reply(messages: list[Message]) -> str:
    """A canned Markdown answer picked by the last user message, marked as simulated; a
    request whose system message asks for a title gets a short title instead (the web
    client's sidebar then reads like a real one)."""
    users = _users(messages)
    last = text_of((users or messages)[-1].get("content"))
    system = " ".join(text_of(m.get("content")) for m in messages if m.get("role") == "system")
    if "title" in system.lower():
        return demo_title(last)
    parts = [DEMO_MARKER]
    if len(users) > 1:  # show that the history arrived: quote the conversation's first message
        parts.append(f"> You first said: {_words(text_of(users[0].get('content')), 12)}")
    low = last.lower()
    if _CODE_RE.search(low):
        parts.append(_DEMO_CODE)
    elif _TABLE_RE.search(low):
        parts.append(_DEMO_TABLE)
    elif _LIST_RE.search(low):
        parts.append(_DEMO_LIST)
    else:
        parts.append(
            f"You asked: “{_words(last, 12) or '(nothing)'}”. This is a **simulated** answer: "
            "no model ran, the `vllm_sim` package wrote it and streams it word by word, "
            "so the interface can be tried without a GPU."
        )
    return "\n\n".join(parts)


def forced_text(
    messages: list[Message], headers: Mapping[str, str], settings: SimSettings
) -> str | None:
    """The text a test asked for (X-Sim-Reply, then echo mode), or None."""
    header = headers.get("X-Sim-Reply") if settings.allow_test_headers else None
    if header is not None:
        return unquote(header)
    if settings.echo:
        users = _users(messages)
        return text_of(users[-1].get("content")) if users else ""
    return None


def free_text(
    messages: list[Message], settings: SimSettings, seed: int | None, variant: int
) -> str:
    """The text the simulated model makes up: a demo answer or a padded summary."""
    if settings.demo:
        return demo_reply(messages)
    return synth_reply(messages, settings.reply_tokens, seed, variant)


def ranked(token: str, key: str, k: int) -> list[tuple[str, float]]:
    """The sampled token and k-1 likelier-to-rarer alternatives with their logprobs."""
    rng = random.Random(hashlib.sha256(f"{key}\0{token}".encode()).digest())
    p = rng.uniform(0.35, 0.97)  # the sampled token is the most likely one
    lead = token[: len(token) - len(token.lstrip())]
    pool = [lead + w for w in _VOCAB if lead + w != token]
    rng.shuffle(pool)
    out = [(token, math.log(p))]
    rest = 1.0 - p
    for alt in pool[: max(k, 1) - 1]:
        rest /= 2  # each alternative half as likely as the mass left: the sum stays below 1
        out.append((alt, math.log(rest)))
    return out


def chat_logprob(token: str, key: str, k: int) -> dict[str, Any]:
    """One entry of a chat choice's logprobs.content."""
    top = ranked(token, key, k)

    def item(tok: str, lp: float) -> dict[str, Any]:
        return {"token": tok, "logprob": lp, "bytes": list(tok.encode())}

    return {**item(*top[0]), "top_logprobs": [item(t, lp) for t, lp in top[:k]]}


def completion_logprobs(items: list[tuple[str, str | None]], offset: int, k: int) -> dict[str, Any]:
    """Legacy completions logprobs for (token, key) pairs; a None key has no logprob."""
    out: dict[str, list[Any]] = {"text_offset": [], "token_logprobs": [], "tokens": [],
                                 "top_logprobs": []}  # fmt: skip
    for token, key in items:
        out["text_offset"].append(offset)
        out["tokens"].append(token)
        offset += len(token)
        if key is None:  # the prompt's first token has no logprob
            out["token_logprobs"].append(None)
            out["top_logprobs"].append(None)
            continue
        top = ranked(token, key, k)
        out["token_logprobs"].append(top[0][1])
        out["top_logprobs"].append(dict(top))
    return out
