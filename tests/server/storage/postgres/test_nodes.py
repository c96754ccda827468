"""Caps and one-of-a-kind rules checked inside a write hold across nodes: two PostgresStorages
(two nodes' writers, each batching its own requests) on one database, writing at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from server.storage import Conflict, TooManyKeys, TooManyMemories
from server.storage.postgres import PostgresStorage, open_postgres


@pytest.fixture
async def nodes(on_postgres: str) -> AsyncIterator[tuple[Any, Any]]:
    """Two nodes' storages on the test's database."""
    opened = [await open_postgres(on_postgres, pool_size=2, busy_timeout_ms=10000,
                                  connect_timeout_s=5, max_batch=64) for _ in range(2)]
    yield opened[0], opened[1]
    for store in opened:
        await store.close()


async def _both(a: PostgresStorage, b: PostgresStorage, make: Any, n: int) -> list[Any]:
    """n calls of make(store, i), alternating between the nodes, all at once."""
    return await asyncio.gather(*(make((a, b)[i % 2], i) for i in range(n)),
                                return_exceptions=True)


async def test_a_burst_of_key_creations_on_two_nodes_stops_exactly_at_the_cap(
        nodes: tuple[Any, Any]) -> None:
    a, b = nodes
    user = (await a.users.create("keys", "h"))["id"]
    results = await _both(a, b, lambda s, i: s.keys.create(
        user, f"k{i}", f"prefix{i}", "hash", None, None, None, max_keys=5), 20)
    made = [r for r in results if not isinstance(r, BaseException)]
    assert len(made) == 5
    assert all(isinstance(r, TooManyKeys) for r in results if isinstance(r, BaseException))
    assert len(await a.keys.list(user)) == 5


async def test_a_burst_of_memories_on_two_nodes_stops_exactly_at_the_cap(
        nodes: tuple[Any, Any]) -> None:
    a, b = nodes
    user = (await a.users.create("mem", "h"))["id"]
    results = await _both(a, b, lambda s, i: s.memories.add(user, f"fact {i}", 4), 12)
    assert sum(not isinstance(r, BaseException) for r in results) == 4
    assert all(isinstance(r, TooManyMemories) for r in results if isinstance(r, BaseException))


async def test_two_nodes_make_only_one_first_admin(nodes: tuple[Any, Any]) -> None:
    a, b = nodes
    results = await _both(a, b, lambda s, i: s.users.create(f"first{i}", "h",
                                                          first_is_admin=True), 6)
    assert [r["role"] for r in results].count("admin") == 1


async def test_two_admins_leaving_on_two_nodes_leave_one_behind(nodes: tuple[Any, Any]) -> None:
    a, b = nodes
    one = (await a.users.create("one", "h", role="admin"))["id"]
    two = (await a.users.create("two", "h", role="admin"))["id"]
    results = await asyncio.gather(a.users.delete(one, keep_last_admin=True),
                                   b.users.delete(two, keep_last_admin=True),
                                   return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["Conflict", "bool"]
    assert sum(isinstance(r, Conflict) for r in results) == 1
    left = [u for u in (await a.users.page(10, None, "2000-01-01"))[0] if u["role"] == "admin"]
    assert len(left) == 1
