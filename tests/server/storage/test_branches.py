"""A conversation's tree on both backends: the path walk (history counts only messages with
text, stops at a summary), switching to a branch's newest leaf, deleting a subtree (a long
chain too) and the leaf that follows, regenerating and editing."""

from __future__ import annotations

from server.storage import Storage
from server.storage.rows import SUMMARY


async def chain(store: Storage, user: int, texts: list[str]) -> tuple[int, list[int]]:
    """A conversation of alternating user and assistant messages; its id and the ids."""
    conv, first, _, _ = await store.messages.add_user_message(user, None, texts[0], "t")
    ids = [first["id"]]
    for n, text in enumerate(texts[1:], 1):
        role = ("user", "assistant")[n % 2]
        ids.append((await store.messages.add(conv, role, text, parent_id=ids[-1]))["id"])
    return conv, ids


async def test_the_path_counts_messages_with_text_and_stops_at_a_summary(store: Storage) -> None:
    user = (await store.users.create("walker", "h"))["id"]
    conv, ids = await chain(store, user, ["q1", "a1", "q2", "", "q3", "a3"])
    rows, _ = await store.prompts.next_turn(user, conv, 3)
    assert rows == [(ids[5], "assistant", "a3"), (ids[4], "user", "q3"), (ids[2], "user", "q2")]
    assert await store.summaries.save(ids[1], "so far: q1 a1", "m")
    rows, _ = await store.prompts.next_turn(user, conv, 10)
    assert rows == [(ids[5], "assistant", "a3"), (ids[4], "user", "q3"), (ids[2], "user", "q2"),
                    (ids[1], SUMMARY, "so far: q1 a1")]
    assert await store.summaries.since_last(user, conv, ids[4], 10) == rows[1:]
    # A summary replaced keeps one row; another user's id gives nothing.
    assert await store.summaries.save(ids[1], "so far, again", None)
    assert (await store.summaries.since_last(user, conv, ids[2], 10))[-1][2] == "so far, again"
    other = (await store.users.create("other", "h"))["id"]
    assert await store.summaries.since_last(other, conv, ids[4], 10) == []
    # A turn's own history is the same walk, in the write that stores it.
    _, _, history, _ = await store.messages.add_user_message(user, conv, "q4", "t", history=2)
    assert history == [(ids[5], "assistant", "a3"), (ids[4], "user", "q3")]


async def test_branches_switch_delete_and_the_leaf_that_follows(store: Storage) -> None:
    user = (await store.users.create("brancher", "h"))["id"]
    conv, ids = await chain(store, user, ["q1", "a1", "q2", "a2"])
    edited, history, _ = await store.messages.edit(user, conv, ids[2], "q2 b", history=5)
    assert edited["parent_id"] == ids[1] and history == [(ids[1], "assistant", "a1"),
                                                         (ids[0], "user", "q1")]
    reply = await store.messages.add(conv, "assistant", "a2 b", parent_id=edited["id"])
    row, _ = await store.conversations.get(user, conv)
    assert row["leaf_id"] == reply["id"]
    await store.branches.switch(user, conv, ids[2])  # back to the first version
    assert (await store.conversations.get(user, conv))[0]["leaf_id"] == ids[3]
    # Deleting the branch on show: the newest leaf left under its parent is shown.
    assert await store.branches.delete(user, conv, ids[2]) == 2
    row, messages = await store.conversations.get(user, conv)
    assert row["leaf_id"] == reply["id"] and row["message_count"] == 4
    assert [m["id"] for m in messages] == [ids[0], ids[1], edited["id"], reply["id"]]
    # Regenerating drops a failed empty reply, keeps the others, and shows the question.
    failed = await store.messages.add(conv, "assistant", "", status="error",
                                      parent_id=edited["id"])
    asked, _, _ = await store.messages.regenerate(user, conv, reply["id"])
    assert asked["id"] == edited["id"]
    _, messages = await store.conversations.get(user, conv)
    assert failed["id"] not in [m["id"] for m in messages]
    assert (await store.conversations.get(user, conv))[0]["leaf_id"] == edited["id"]


async def test_a_long_chain_deletes_whole(store: Storage) -> None:
    user = (await store.users.create("long", "h"))["id"]
    conv, ids = await chain(store, user, [f"m{n}" for n in range(1500)])
    assert await store.branches.delete(user, conv, ids[1]) == 1499
    row, messages = await store.conversations.get(user, conv)
    assert [m["id"] for m in messages] == [ids[0]] and row["leaf_id"] == ids[0]
    assert row["message_count"] == 1
    assert await store.quotas.stored(user) == (1, len("t") + len("m0"))
