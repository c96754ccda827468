"""Whole conversations in and out on both backends: an import keeps its tree, active leaf and
times; an export gives them back by pages; a refused import stores nothing."""

from __future__ import annotations

import pytest

from server.storage import NewConversation, NewMessage, Quota, Storage, TooManyConversations


def tree() -> NewConversation:
    at = "2025-05-0{}T10:00:00.000Z".format
    return NewConversation(title="Lisbon", created_at=at(1), model="m", leaf=2, messages=(
        NewMessage("user", "trip?", at(1)),
        NewMessage("assistant", "first answer", at(2), model="m", parent=0),
        NewMessage("assistant", "", at(3), status="error", parent=0,
                   error='{"code":"upstream_error","message":"x"}'),
        NewMessage("user", "more?", at(4), parent=1),
    ))


async def test_an_import_keeps_its_tree_and_comes_back_out(store: Storage) -> None:
    user = (await store.users.create("mover", "h"))["id"]
    first = await store.transfer.import_one(user, tree())
    second = await store.transfer.import_one(user, tree())
    assert first["updated_at"] == "2025-05-04T10:00:00.000Z" and first["message_count"] == 4
    assert first["model"] == "m" and await store.conversations.title_source(
        user, first["id"]) == "user"
    page = await store.transfer.export_page(user, 0, 1)
    assert [c["id"] for c, _ in page] == [first["id"]]
    conv, messages = page[0]
    ids = [m["id"] for m in messages]
    assert conv["leaf_id"] == ids[2] and ids == sorted(ids)
    assert [m.get("parent_id") for m in messages] == [None, ids[0], ids[0], ids[1]]
    assert messages[2]["error"] == {"code": "upstream_error", "message": "x"}
    assert messages[1]["model"] == "m" and messages[2]["status"] == "error"
    rest = await store.transfer.export_page(user, first["id"], 10)
    assert [c["id"] for c, _ in rest] == [second["id"]]
    assert await store.transfer.export_page(user, second["id"], 10) == []
    # Messages imported later still get ids above the imported ones.
    _, added, _, _ = await store.messages.add_user_message(user, second["id"], "next", "t")
    assert added["id"] > max(m["id"] for m in rest[0][1])


async def test_a_refused_import_stores_nothing(store: Storage) -> None:
    user = (await store.users.create("capped", "h"))["id"]
    await store.transfer.import_one(user, tree())
    with pytest.raises(TooManyConversations):
        await store.transfer.import_one(user, tree(), Quota(conversations=1))
    assert await store.quotas.stored(user) == (1, len("Lisbon") + sum(
        len(m.content) for m in tree().messages))
    assert len(await store.transfer.export_page(user, 0, 10)) == 1
