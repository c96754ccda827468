"""Auth events (migration V14) on real SQLite files: written by triggers in the transaction of
the change they report, read by id, pruned by age."""

from __future__ import annotations

import time

from server.storage import AuthEvent
from server.storage.sqlite import Database
from server.storage.sqlite.events import SqliteAuthEvents
from server.storage.sqlite.keys import SqliteKeys
from server.storage.sqlite.tokens import SqliteTokens
from server.storage.sqlite.users import SqliteUsers
from tests.support.sqlite import MakeDb


def shape(events: list[AuthEvent]) -> list[tuple[int, str | None, int | None]]:
    return [(e.user_id, e.jti, e.key_id) for e in events]


async def test_each_revoking_change_writes_one_event_and_nothing_else_does(
        make_db: MakeDb) -> None:
    db = await make_db()
    users, tokens, keys, events = (SqliteUsers(db), SqliteTokens(db), SqliteKeys(db),
                                   SqliteAuthEvents(db))
    assert await events.latest() == 0
    ann = await users.create("ann", "hash")
    bob = await users.create("bob", "hash")
    key = await keys.create(ann["id"], "script", "a" * 12, "hash", None, None, None)
    await keys.touch({key["id"]: "2026-01-01T00:00:00.000Z"})  # a key used: no event
    await users.update(ann["id"], limits={"max_api_keys_per_user": 3})  # no event
    assert await events.latest() == 0

    await tokens.revoke("jti-1", int(time.time()) + 60, ann["id"])
    await tokens.revoke("jti-1", int(time.time()) + 60, ann["id"])  # already revoked: none
    await users.update(bob["id"], status="disabled")
    await users.update(bob["id"], password_hash="new", new_epoch=True)
    await keys.delete(ann["id"], key["id"])
    await users.delete(bob["id"])
    found = await events.since(0, 100)
    assert shape(found) == [(ann["id"], "jti-1", None), (bob["id"], None, None),
                            (bob["id"], None, None), (ann["id"], None, key["id"]),
                            (bob["id"], None, None)]
    assert [e.id for e in found] == sorted(e.id for e in found)
    assert all(abs(e.at - time.time()) < 60 for e in found)
    assert await events.latest() == found[-1].id
    assert shape(await events.since(found[1].id, 2)) == shape(found[2:4])


async def test_the_event_is_part_of_the_change_a_rolled_back_change_leaves_none(
        make_db: MakeDb) -> None:
    db = await make_db()
    ann = await SqliteUsers(db).create("ann", "hash")

    def fails(conn: object) -> None:
        conn.execute("UPDATE users SET status = 'disabled' WHERE id = ?",  # type: ignore[attr-defined]
                     (ann["id"],))
        raise RuntimeError("the rest of the write failed")

    try:
        await db.write(fails)
    except RuntimeError:
        pass
    assert await SqliteAuthEvents(db).since(0, 10) == []


async def test_a_role_change_and_a_deleted_users_keys_are_reported(make_db: MakeDb) -> None:
    db: Database = await make_db()
    users, keys, events = SqliteUsers(db), SqliteKeys(db), SqliteAuthEvents(db)
    ann = await users.create("ann", "hash")
    key = await keys.create(ann["id"], "script", "b" * 12, "hash", None, None, None)
    await users.promote(["ann"])
    await users.delete(ann["id"])
    assert shape(await events.since(0, 10)) == [(ann["id"], None, None),
                                                (ann["id"], None, key["id"]),
                                                (ann["id"], None, None)]


async def test_prune_deletes_only_older_events(make_db: MakeDb) -> None:
    db = await make_db()
    events = SqliteAuthEvents(db)
    ann = await SqliteUsers(db).create("ann", "hash")
    await SqliteTokens(db).revoke("old", int(time.time()) + 60, ann["id"])
    await db.write(lambda c: c.execute("UPDATE auth_events SET at = at - 3600"))
    await SqliteTokens(db).revoke("new", int(time.time()) + 60, ann["id"])
    await events.prune(int(time.time()) - 60)
    assert [e.jti for e in await events.since(0, 10)] == ["new"]
    assert await events.latest() == 2  # ids are never reused (AUTOINCREMENT)
