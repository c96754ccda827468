"""The schema's own bookkeeping (SQLite's triggers since V2, PostgreSQL's since its V1) on both
backends: plain SQL writes keep each conversation's count, activity and active leaf, each
message's owner and each user's stored characters, exactly alike."""

from __future__ import annotations

from server.storage import Storage
from tests.support.storage import execute, rows, value


async def test_plain_sql_writes_keep_every_counter(store: Storage) -> None:
    user = (await store.users.create("counted", "h"))["id"]
    await execute(store, "INSERT INTO conversations (user_id, title, created_at, updated_at) "
                  "VALUES (?, 'hello', 't0', 't0')", user)
    conv = await value(store, "SELECT max(id) FROM conversations")
    add = ("INSERT INTO messages (conversation_id, role, content, created_at, parent_id) "
           "VALUES (?, ?, ?, ?, ?)")
    await execute(store, add, conv, "user", "abc", "t1", None)
    question = await value(store, "SELECT max(id) FROM messages")
    await execute(store, add, conv, "assistant", "reply", "t2", question)
    reply = await value(store, "SELECT max(id) FROM messages")
    await execute(store, add, conv, "assistant", "other", "t3", question)  # a sibling
    sibling = await value(store, "SELECT max(id) FROM messages")

    def conversation() -> str:
        return "SELECT message_count, updated_at, leaf_id FROM conversations WHERE id = ?"

    # The reply followed the leaf and became it; the sibling did not follow it: leaf kept.
    assert await rows(store, conversation(), conv) == [(3, "t3", reply)]
    assert await rows(store, "SELECT DISTINCT owner FROM messages") == [(user,)]
    assert await store.quotas.stored(user) == (1, len("hello" "abc" "reply" "other"))

    await execute(store, "UPDATE messages SET content = 'abcdef' WHERE id = ?", question)
    await execute(store, "UPDATE conversations SET title = 'hi', settings = '{\"t\":1}' "
                  "WHERE id = ?", conv)
    await store.memories.add(user, "a memory", 10)
    await store.account_settings.configure(user, {"theme": "dark"})
    settings = len('{"theme":"dark"}')
    chars = len("hi" '{"t":1}' "abcdef" "reply" "other" "a memory") + settings
    assert await store.quotas.stored(user) == (1, chars)

    await execute(store, "DELETE FROM messages WHERE id = ?", sibling)
    assert (await rows(store, conversation(), conv))[0][0] == 2
    assert await store.quotas.stored(user) == (1, chars - len("other"))
    # A user's message starts a branch and is shown at once (an edit).
    await execute(store, add, conv, "user", "edit", "t4", None)
    edit = await value(store, "SELECT max(id) FROM messages")
    assert await rows(store, conversation(), conv) == [(3, "t4", edit)]

    await execute(store, "DELETE FROM conversations WHERE id = ?", conv)
    assert await store.quotas.stored(user) == (0, len("a memory") + settings)
    assert await value(store, "SELECT count(*) FROM messages") == 0
