"""Tests for server/services/profile.py: the memories' token budget and the profile cache."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from server.runner import Running
from server.services.memory import approx_tokens
from server.services.profile import MEMORY_HEADING, Profiles, memory_block
from server.storage.sqlite import Database
from server.storage.sqlite.memories import SqliteMemories
from tests.support.app import db_of, storage_of


def test_all_memories_that_fit_go_newest_first_one_a_line() -> None:
    assert memory_block(("newest", "older", "oldest"), 1000) == \
        f"{MEMORY_HEADING}\n- newest\n- older\n- oldest"


def test_over_budget_the_oldest_are_left_out() -> None:
    memories = ("a" * 40, "b" * 40, "c" * 40)  # newest first
    each = approx_tokens("a" * 40)
    assert memory_block(memories, 2 * each) == f"{MEMORY_HEADING}\n- {'a' * 40}\n- {'b' * 40}"
    assert memory_block(memories, 2 * each - 1) == f"{MEMORY_HEADING}\n- {'a' * 40}"


def test_a_long_one_stops_the_list_even_if_older_ones_would_fit() -> None:
    # Newest first, and nothing older than one left out: what is sent is a recent run.
    assert memory_block(("short", "x" * 400, "tiny"), 30) == f"{MEMORY_HEADING}\n- short"


def test_nothing_fits_nothing_is_sent() -> None:
    assert memory_block(("anything",), 0) == ""
    assert memory_block((), 300) == ""


class _Counted(SqliteMemories):
    """The real store, counting its loads, with a hook that runs while one is out."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.loads = 0
        self.during_load: Callable[[], object] | None = None

    async def profile(self, user_id: int) -> tuple[dict[str, Any], list[str]]:
        self.loads += 1
        found = await super().profile(user_id)
        if self.during_load is not None:
            self.during_load()
        return found


async def _user(server: Running, name: str) -> int:
    user = await storage_of(server).users.create(name, "hash")
    return int(user["id"])


async def test_a_profile_is_loaded_once_until_forgotten(server: Running) -> None:
    store = _Counted(db_of(server))
    profiles = Profiles(store, 300, 10)
    user = await _user(server, "once")
    await store.add(user, "first", 10)
    first = await profiles.get(user)
    assert first.memories == ("first",) and first.block == f"{MEMORY_HEADING}\n- first"
    assert await profiles.get(user) is first and store.loads == 1
    await store.add(user, "second", 10)
    assert await profiles.get(user) is first  # a write not through the services: unseen
    profiles.forget(user)
    assert (await profiles.get(user)).memories == ("second", "first") and store.loads == 2


async def test_a_load_that_raced_a_change_is_not_kept(server: Running) -> None:
    store = _Counted(db_of(server))
    profiles = Profiles(store, 300, 10)
    user = await _user(server, "racer")
    store.during_load = lambda: profiles.forget(user)  # a write lands while the read is out
    await profiles.get(user)
    store.during_load = None
    await profiles.get(user)
    await profiles.get(user)
    assert store.loads == 2  # the first, maybe stale, was not kept; the second was


async def test_the_cache_is_bounded(server: Running) -> None:
    store = _Counted(db_of(server))
    profiles = Profiles(store, 300, 2)
    users = [await _user(server, f"lru{i}") for i in range(3)]
    for user in users:
        await profiles.get(user)
    await profiles.get(users[0])  # the least recently used went first
    assert store.loads == 4
