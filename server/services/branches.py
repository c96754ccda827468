"""A conversation's branches: which messages are on show, and the alternatives of each."""

from __future__ import annotations

from ..storage.rows import MessageRow


def shown(messages: list[MessageRow], leaf_id: int | None) -> list[MessageRow]:
    """The branch on show: the path from the first message to the active leaf, oldest first.

    A message with alternatives (other messages under the same parent: earlier versions of an
    edited question, other answers to it) carries `siblings`, their ids oldest first, itself
    included: the web client's "‹ 2/3 ›".
    """
    if not messages:
        return []
    by_id = {m["id"]: m for m in messages}
    children: dict[int | None, list[int]] = {}
    for m in messages:  # oldest first: each list of children is too
        children.setdefault(m.get("parent_id"), []).append(m["id"])
    leaf = by_id.get(leaf_id) if leaf_id is not None else None
    if leaf is None:
        leaf = messages[-1]  # a leaf the conversation lost (never expected): the newest
    path: list[MessageRow] = []
    seen: set[int] = set()
    node: MessageRow | None = leaf
    while node is not None and node["id"] not in seen:  # a cycle would be a bug: stop
        seen.add(node["id"])
        path.append(node)
        parent = node.get("parent_id")
        node = by_id.get(parent) if parent is not None else None
    path.reverse()
    for m in path:
        group = children.get(m.get("parent_id"), [])
        if len(group) > 1:
            m["siblings"] = group
    return path
