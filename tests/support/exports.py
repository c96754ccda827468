"""Import samples shared by the API and browser tests."""

from __future__ import annotations

from typing import Any


def node(ident: str, parent: str | None, children: list[str], role: str | None = None,
         parts: list[Any] | None = None, t: float = 1_700_000_000.0,
         **extra: Any) -> dict[str, Any]:
    message = None if role is None else {
        "id": ident, "author": {"role": role, "name": None, "metadata": {}},
        "create_time": t, "content": {"content_type": "text", "parts": parts or [""]},
        "status": "finished_successfully", "metadata": extra}
    return {"id": ident, "message": message, "parent": parent, "children": children}


def chatgpt_sample() -> list[dict[str, Any]]:
    """Two conversations as ChatGPT exports them: the first edited (two branches, the second
    current), with a hidden system message, an empty node and a tool call."""
    edited = {
        "title": "Trip \u202eplanning\u202c", "create_time": 1_700_000_000.5,
        "update_time": 1_700_000_500.0, "current_node": "a2",
        "mapping": {
            "root": node("root", None, ["sys"]),
            "sys": node("sys", "root", ["u1"], "system", [""],
                        is_visually_hidden_from_conversation=True),
            "u1": node("u1", "sys", ["a1"], "user", ["Where to in June?"], 1_700_000_001),
            "a1": node("a1", "u1", ["u2", "u2b"], "assistant", ["Try Lisbon."],
                       1_700_000_002, model_slug="gpt-4o"),
            "u2": node("u2", "a1", ["a2old"], "user", ["Cheaper please"], 1_700_000_003),
            "a2old": node("a2old", "u2", [], "assistant", ["Porto."], 1_700_000_004),
            "u2b": node("u2b", "a1", ["tool"], "user", ["Somewhere cold"], 1_700_000_005),
            "tool": node("tool", "u2b", ["empty"], "tool", ["search results"], 1_700_000_006),
            "empty": node("empty", "tool", ["a2"], "assistant", [""], 1_700_000_007),
            "a2": node("a2", "empty", [], "assistant", ["Try Tromsø.", {"asset": "img"}],
                       1_700_000_008, model_slug="gpt-4o"),
        }}
    plain = {
        "title": "Second", "create_time": 1_600_000_000, "current_node": "b",
        "mapping": {"r": node("r", None, ["a"]),
                    "a": node("a", "r", ["b"], "user", ["hi"], 1_600_000_001),
                    "b": node("b", "a", [], "assistant", ["hello"], 1_600_000_002)}}
    return [edited, plain]
