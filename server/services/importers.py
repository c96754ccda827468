"""Reading import files: chatgate's own JSON (one, a list, or JSON Lines) and ChatGPT's
`conversations.json`; pure functions, run off the event loop (a body can be megabytes)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from ..storage import NewConversation, NewMessage
from ..storage.rows import now_iso
from .text import visible

FORMAT = "chatgate.conversation"
VERSION = 1
MAX_TITLE = 200
_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
_ROLES = frozenset({"user", "assistant"})  # system prompts come from config, not history
_STATUSES = frozenset({"complete", "incomplete", "error"})
_LATEST_EPOCH = 253_402_300_799  # 9999-12-31T23:59:59Z


class UnknownFormat(ValueError):
    """The body is none of the formats an import reads."""


class BadConversation(ValueError):
    """One conversation of an import cannot be read; the others still can."""


@dataclass(frozen=True, slots=True)
class Item:
    """One conversation found in an import: read, or refused with a reason."""

    index: int
    title: str | None
    conversation: NewConversation | None = None
    error: str = ""


def parse(raw: bytes) -> list[Item]:
    """Every conversation in an import body (UnknownFormat when it is no known format)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _json_lines(raw)
    if isinstance(body, dict) and body.get("format") == FORMAT:
        _shape(0, body)
        return [_item(0, body, _chatgate)]
    if isinstance(body, list) and body:
        for index, conversation in enumerate(body):
            _shape(index, conversation)
        return [_item(i, c, _chatgate if c.get("format") == FORMAT else _chatgpt)
                for i, c in enumerate(body)]
    raise UnknownFormat(
        "the body is not a chatgate export (JSON with \"format\": \"chatgate.conversation\", "
        "or JSON Lines of them) nor a ChatGPT conversations.json (a list of conversations "
        "with a \"mapping\")")


def _shape(index: int, conversation: object) -> None:
    """The outline the API document promises (a body that breaks it is refused whole);
    what is inside each conversation is checked on its own."""
    where = f"conversation {index}"
    if not isinstance(conversation, dict):
        raise UnknownFormat(f"{where} is not a JSON object")
    if conversation.get("format") == FORMAT:
        if not isinstance(conversation.get("messages"), list):
            raise UnknownFormat(f"{where}: a chatgate conversation needs a 'messages' list")
    elif not isinstance(conversation.get("mapping"), dict):
        raise UnknownFormat(f"{where} is neither a chatgate conversation (\"format\": "
                            f"\"{FORMAT}\") nor a ChatGPT one (with a \"mapping\" object)")


def _json_lines(raw: bytes) -> list[Item]:
    """chatgate's JSON Lines; a line that is not a conversation is refused on its own."""
    lines = [line for line in raw.split(b"\n") if line.strip()]
    items: list[Item] = []
    for index, line in enumerate(lines):
        try:
            body = orjson.loads(line)
        except orjson.JSONDecodeError as err:
            if index == 0:
                raise UnknownFormat(f"the body is not valid JSON nor JSON Lines: {err}") from err
            items.append(Item(index, None, error=f"line {index + 1} is not valid JSON"))
            continue
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            if index == 0:
                raise UnknownFormat("JSON Lines must hold chatgate conversations, one a line")
            items.append(Item(index, None, error="not a chatgate conversation"))
            continue
        items.append(_item(index, body, _chatgate))
    if not items:
        raise UnknownFormat("the body is empty")
    return items


def _item(index: int, body: dict[str, Any], read: Any) -> Item:
    title = _title(body.get("title"))
    try:
        return Item(index, title, read(body, title))
    except BadConversation as err:
        return Item(index, title, error=str(err))


def _key(value: object) -> str | int | None:
    """A value usable as an id or a name (a string or an integer), else None: a list or an
    object in its place is the file's mistake, not a reason to fail the whole import."""
    return value if isinstance(value, (str, int)) and not isinstance(value, bool) else None


def _title(value: object) -> str:
    """A title shown as a label: no bidi controls or invisible characters, bounded."""
    text = visible(value)[:MAX_TITLE].strip() if isinstance(value, str) else ""
    return text or "Imported chat"


def _clean(text: str) -> str:
    return text.replace("\x00", "")


def _iso(value: object) -> str | None:
    """A timestamp as chatgate stores it, or None if it is not one."""
    if isinstance(value, str) and _ISO.fullmatch(value):
        try:
            datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S")
        except ValueError:
            return None
        return value
    return None


def _epoch(value: object) -> str | None:
    """Seconds since 1970 (ChatGPT's create_time) as chatgate's timestamp, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not 0 < value <= _LATEST_EPOCH:
        return None
    ms = int(value * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def _chatgate(body: dict[str, Any], title: str) -> NewConversation:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise BadConversation("'messages' must be a list")
    out: list[NewMessage] = []
    now = now_iso()
    index: dict[object, int] = {}  # an exported message's id -> its place in `out`
    for n, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise BadConversation(f"message {n} must be an object with a string 'content'")
        if _key(m.get("role")) not in _ROLES:
            raise BadConversation(f"message {n} has role {str(m.get('role'))[:20]!r}; "
                                  "only 'user' and 'assistant' can be imported")
        status = str(m["status"]) if _key(m.get("status")) in _STATUSES else "complete"
        model = m.get("model") if isinstance(m.get("model"), str) else None
        error = m.get("error")
        error_json = None
        if isinstance(error, dict) and all(isinstance(error.get(k), str)
                                           for k in ("code", "message")):
            error_json = orjson.dumps({"code": error["code"][:100],
                                       "message": error["message"][:2000]}).decode()
        out.append(NewMessage(m["role"], _clean(m["content"]),
                              _iso(m.get("created_at")) or now, status,
                              model[:200] if model else None, error_json, _parent(m, n, index)))
        if _key(m.get("id")) is not None:
            index[m["id"]] = n
    created = _iso(body.get("created_at")) or (out[0].created_at if out else now)
    model = body.get("model")
    leaf = index.get(_key(body.get("leaf_id")))
    return NewConversation(title, created, tuple(out),
                           model[:200] if isinstance(model, str) and model else None, leaf)


def _parent(message: dict[str, Any], n: int, index: dict[object, int]) -> int | None:
    """Where a message hangs: its exported `parent_id` among the messages before it; null: a
    first message; absent (a file from before branches): the message before it."""
    if "parent_id" not in message:
        return n - 1 if n else None
    parent = message["parent_id"]
    if parent is None:
        return None
    if _key(parent) not in index:
        raise BadConversation(f"message {n} names a parent_id that no earlier message has")
    return index[parent]


def _chatgpt(body: dict[str, Any], title: str) -> NewConversation:
    """Every branch of the tree (`mapping`), text parts only; the branch shown last
    (`current_node`) is the one shown. Nodes the user never saw (system, tool, hidden,
    empty) are left out and their children hang from the nearest message kept above them."""
    mapping = body["mapping"]
    if not isinstance(mapping, dict):
        raise BadConversation("'mapping' must be an object")
    nodes = {k: v for k, v in mapping.items() if isinstance(v, dict)}
    roots = [k for k, v in nodes.items() if _key(v.get("parent")) not in nodes]
    if not roots:
        raise BadConversation("the conversation has no root node")
    now = now_iso()
    out: list[NewMessage] = []
    kept: dict[str, int] = {}  # node key -> its message's index in `out`
    # Depth first, children in their order (an edit's branch comes after the one it replaced,
    # so the newest branch gets the newest ids); a node seen twice (a cycle) is not followed.
    stack: list[tuple[str, int | None]] = [(roots[0], None)]
    seen: set[str] = set()
    while stack:
        key, parent = stack.pop()
        if key in seen or key not in nodes:
            continue
        seen.add(key)
        message = _visible(nodes[key].get("message"), now, parent)
        if message is not None:
            kept[key] = parent = len(out)
            out.append(message)
        children = nodes[key].get("children")
        if isinstance(children, list):
            stack.extend((c, parent) for c in reversed(children) if isinstance(c, str))
    created = _epoch(body.get("create_time")) or (out[0].created_at if out else now)
    return NewConversation(title, created, tuple(out), None,
                           _shown(nodes, kept, body.get("current_node")))


def _visible(message: object, now: str, parent: int | None) -> NewMessage | None:
    """A node's message as imported, or None if the user never saw it."""
    if not isinstance(message, dict):
        return None
    author = message.get("author")
    role = author.get("role") if isinstance(author, dict) else None
    if _key(role) not in _ROLES:
        return None  # system, tool: not part of what the user sees
    metadata = message.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    if metadata.get("is_visually_hidden_from_conversation"):
        return None
    content = message.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    text = _clean("\n\n".join(p for p in parts if isinstance(p, str))
                  if isinstance(parts, list) else "")
    if not text.strip():
        return None
    slug = metadata.get("model_slug")
    return NewMessage(str(role), text, _epoch(message.get("create_time")) or now, "complete",
                      slug[:200] if role == "assistant" and isinstance(slug, str) and slug
                      else None, None, parent)


def _shown(nodes: dict[str, Any], kept: dict[str, int], current: object) -> int | None:
    """The index of the message to show: `current_node`, or the nearest kept above it."""
    seen: set[str] = set()
    key = current
    while isinstance(key, str) and key in nodes and key not in seen:
        if key in kept:
            return kept[key]
        seen.add(key)
        key = nodes[key].get("parent")
    return None  # none named: the last message imported (the last child at every step)


def chatgate_json(conversation: dict[str, Any]) -> dict[str, Any]:
    """A conversation (with its messages) in chatgate's export format."""
    return {"format": FORMAT, "version": VERSION, **conversation}
