"""A turn's mark on its conversation and its reply stored once, on both backends: a second
turn is refused while the first's mark holds (new message, edit, regenerate), a stale mark
does not hold, the reply (or unmark) ends it, renewing keeps it, and a turn's second reply
is TurnStored with the first."""

from __future__ import annotations

import pytest

from server.storage import ConversationBusy, Storage, TurnMark, TurnStored
from server.storage.rows import iso_at, now_iso

FRESH = iso_at(0)  # no mark is older than this: every other turn's mark holds


def mark(turn: str, stale_before: str = FRESH) -> TurnMark:
    return TurnMark(turn, stale_before)


async def count(store: Storage, user: int, conv: int) -> int:
    return len((await store.conversations.get(user, conv))[1])


async def test_a_marked_conversation_refuses_another_turn_until_the_reply(
        store: Storage) -> None:
    user = (await store.users.create("marked", "h"))["id"]
    conv, q1, _, _ = await store.messages.add_user_message(user, None, "q1", "t",
                                                           turn=mark("t1"))
    before = await count(store, user, conv)
    with pytest.raises(ConversationBusy):
        await store.messages.add_user_message(user, conv, "q2", "t", turn=mark("t2"))
    with pytest.raises(ConversationBusy):
        await store.messages.edit(user, conv, q1["id"], "q1 again", turn=mark("t2"))
    with pytest.raises(ConversationBusy):
        await store.messages.regenerate(user, conv, None, turn=mark("t2"))
    assert await count(store, user, conv) == before  # nothing stored
    # The turn itself may write again (its mark is its own); writes without a mark pass.
    await store.messages.add(conv, "assistant", "a1", parent_id=q1["id"], turn="t1")
    _, q2, _, _ = await store.messages.add_user_message(user, conv, "q2", "t", turn=mark("t2"))
    assert q2["parent_id"] is not None
    # A reply of another turn does not end t2's mark; its own does.
    with pytest.raises(ConversationBusy):
        await store.messages.add_user_message(user, conv, "q3", "t", turn=mark("t3"))
    await store.messages.add(conv, "assistant", "a2", parent_id=q2["id"], turn="t2")
    await store.messages.regenerate(user, conv, None, turn=mark("t3"))
    with pytest.raises(ConversationBusy):
        await store.messages.add_user_message(user, conv, "q4", "t", turn=mark("t4"))
    await store.messages.unmark(conv, "t3")  # stopped before any text: nothing stored
    await store.messages.edit(user, conv, q2["id"], "q2 again", turn=mark("t4"))
    with pytest.raises(ConversationBusy):
        await store.messages.add_user_message(user, conv, "q5", "t", turn=mark("t5"))
    await store.messages.unmark(conv, "t3")  # an old turn's unmark leaves t4's mark
    with pytest.raises(ConversationBusy):
        await store.messages.add_user_message(user, conv, "q5", "t", turn=mark("t5"))


async def test_a_stale_mark_does_not_hold_and_renewing_keeps_it(store: Storage) -> None:
    user = (await store.users.create("stale", "h"))["id"]
    conv, _, _, _ = await store.messages.add_user_message(user, None, "q1", "t",
                                                          turn=mark("t1"))
    later = iso_at(4_000_000_000)  # every mark made before this is stale to this turn
    with pytest.raises(ConversationBusy):
        await store.messages.add_user_message(user, conv, "q2", "t", turn=mark("t2"))
    await store.messages.add_user_message(user, conv, "q2", "t", turn=mark("t2", later))
    # t2's mark renewed now: a turn that calls marks from before now stale still waits.
    before_renewal = now_iso()
    await store.messages.renew([(conv, "t2"), (conv, "gone")])
    with pytest.raises(ConversationBusy):
        await store.messages.add_user_message(user, conv, "q3", "t",
                                              turn=mark("t3", before_renewal))


async def test_a_turns_reply_is_stored_once(store: Storage) -> None:
    user = (await store.users.create("once", "h"))["id"]
    conv, q1, _, _ = await store.messages.add_user_message(user, None, "q1", "t",
                                                           turn=mark("t1"))
    first = await store.messages.add(conv, "assistant", "partial", "incomplete", model="m",
                                     parent_id=q1["id"], turn="t1")
    with pytest.raises(TurnStored) as taken:
        await store.messages.add(conv, "assistant", "the whole reply", parent_id=q1["id"],
                                 turn="t1")
    assert taken.value.row["id"] == first["id"]
    assert (taken.value.row["content"], taken.value.row["status"]) == ("partial", "incomplete")
    assert taken.value.row["model"] == "m" and taken.value.row["parent_id"] == q1["id"]
    assert await count(store, user, conv) == 2
    # Replies without a turn (imports, plain writes) are never taken for one another.
    await store.messages.add(conv, "assistant", "x", parent_id=q1["id"])
    await store.messages.add(conv, "assistant", "y", parent_id=q1["id"])
    assert await count(store, user, conv) == 4
