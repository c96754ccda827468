"""Per-user caps on the real app: running jobs, conversation rate and count, stored text."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from server import keys
from server.config import LimitsConfig
from server.runner import Running
from server.services.usage import QuotaExceeded
from server.storage import TooManyConversations
from tests.support.admin import call
from tests.support.app import User, error_of, register_over_http, storage_of
from tests.support.sse import events
from tests.support.storage import rows, value
from vllm_sim import SimServer

Custom = Callable[..., Awaitable[Running]]




async def stored(server: Running, user: User) -> tuple[int, int]:
    """The user's (conversations, characters) counter, and a check that it is the truth."""
    counted = await storage_of(server).quotas.stored(user.id)
    truth = (await rows(
        server, "SELECT (SELECT count(*) FROM conversations WHERE user_id = ?), "
        "(SELECT coalesce(sum(length(title)), 0) FROM conversations WHERE user_id = ?) + "
        "(SELECT coalesce(sum(length(content)), 0) FROM messages WHERE owner = ?)",
        user.id, user.id, user.id))[0]
    assert counted == tuple(int(n) for n in truth)
    return counted


async def create(s: aiohttp.ClientSession, user: User, title: str = "t") -> aiohttp.ClientResponse:
    """POST /api/conversations as the user."""
    return await s.post("/api/conversations", json={"title": title}, headers=user.headers)


# --- running jobs ----------------------------------------------------------------------------


async def test_a_user_at_the_running_cap_waits_while_others_are_served(
        custom: Custom, simulator: SimServer) -> None:
    server = await custom(queue={"workers": 4, "max_running_per_user": 2})
    a, b = [await register_over_http(server.url, n) for n in ("alice", "bob")]
    async with aiohttp.ClientSession() as control:
        async with control.post(f"{simulator.root_url}/sim/faults",
                                json={"mode": "hang_after_first", "count": 2}) as resp:
            assert resp.status == 200
    body = {"model": "vllm-simulator", "stream": True, "max_tokens": 8,
            "messages": [{"role": "user", "content": "hold a worker"}]}
    pool = server.app[keys.POOL]
    async with aiohttp.ClientSession(server.url) as s:
        # Two of alice's jobs hold workers, one through /v1 and one through /api/chat.
        held_v1 = await s.post("/v1/chat/completions", json=body, headers=a.headers)
        assert held_v1.status == 200  # headers come with the model's first bytes: it runs
        held_chat = await s.post("/api/chat", json={"message": "hold", "stream": True},
                                 headers=a.headers)
        async for name, _ in events(held_chat):
            if name == "message":
                break  # a delta: running
        assert pool.queue.running(a.id) == 2
        # Two workers are free, but alice is at her cap: her third message waits...
        third = await s.post("/api/chat", json={"message": "third", "stream": True},
                             headers=a.headers)
        stream = events(third)
        assert (await anext(stream))[0] == "meta"
        assert await anext(stream) == ("queued", {"position": 0})
        # ...while bob, who came later, is served at once.
        async with s.post("/api/chat", json={"message": "bob's"}, headers=b.headers) as resp:
            assert resp.status == 200, await resp.text()
        assert pool.queue.qsize() == 1 and pool.queue.running(a.id) == 2
        held_v1.close()  # one of alice's jobs ends: her waiting one runs
        rest = [event async for event in stream]
        assert rest[-1][0] == "done" and any(name == "message" for name, _ in rest)
        held_chat.close()
        third.close()


async def test_a_v1_request_for_n_sequences_weighs_n_against_the_running_cap(
        custom: Custom, simulator: SimServer) -> None:
    server = await custom(queue={"workers": 4, "max_running_per_user": 4})
    a, b = [await register_over_http(server.url, n) for n in ("alice", "bob")]
    async with aiohttp.ClientSession() as control:
        async with control.post(f"{simulator.root_url}/sim/faults",
                                json={"mode": "hang_after_first", "count": 1}) as resp:
            assert resp.status == 200
    body = {"model": "vllm-simulator", "stream": True, "max_tokens": 8, "n": 4,
            "messages": [{"role": "user", "content": "four at once"}]}
    pool = server.app[keys.POOL]
    async with aiohttp.ClientSession(server.url) as s:
        # One worker, four sequences at the model server: alice's whole cap.
        held = await s.post("/v1/chat/completions", json=body, headers=a.headers)
        assert held.status == 200  # headers come with the model's first bytes: it runs
        assert pool.queue.running(a.id) == 4
        # Three workers are free, but alice's next request would pass her cap: it waits...
        second = await s.post("/api/chat", json={"message": "second", "stream": True},
                              headers=a.headers)
        stream = events(second)
        assert (await anext(stream))[0] == "meta"
        assert await anext(stream) == ("queued", {"position": 0})
        # ...while bob, who came later, takes a free worker at once.
        async with s.post("/api/chat", json={"message": "bob's"}, headers=b.headers) as resp:
            assert resp.status == 200, await resp.text()
        assert pool.queue.qsize() == 1 and pool.queue.running(a.id) == 4
        held.close()  # alice's heavy request ends: her waiting one runs
        rest = [event async for event in stream]
        assert rest[-1][0] == "done" and any(name == "message" for name, _ in rest)
        second.close()
    async with aiohttp.ClientSession() as control:  # n went to the model server untouched
        async with control.get(f"{simulator.root_url}/sim/requests") as resp:
            assert (await resp.json())[0]["n"] == 4


@pytest.mark.parametrize(("field", "value"), [
    ("n", 0), ("n", 129), ("n", -1), ("n", "4"), ("n", True), ("n", 2.5),
    ("best_of", 0), ("best_of", 1000), ("best_of", "many")])
async def test_absurd_n_or_best_of_is_400_in_openais_shape(
        custom: Custom, field: str, value: Any) -> None:
    server = await custom()
    user = await register_over_http(server.url, "greedy")
    body = {"model": "vllm-simulator", "prompt": "x", field: value}
    async with aiohttp.ClientSession(server.url) as s:
        for path in ("/v1/chat/completions", "/v1/completions"):
            sent = {**body, "messages": [{"role": "user", "content": "x"}]}
            async with s.post(path, json=sent, headers=user.headers) as resp:
                err = await error_of(resp, 400, "invalid_request")
                assert err["param"] == field and err["type"] == "invalid_request_error"
                assert "1 to 128" in err["message"]


# --- conversation creation rate and count ----------------------------------------------------


async def test_creating_conversations_too_fast_is_429_on_both_routes(custom: Custom) -> None:
    server = await custom(limits={"conversations_per_user_per_minute": 3})
    user, other = [await register_over_http(server.url, n) for n in ("flooder", "other")]
    async with aiohttp.ClientSession(server.url) as s:
        for _ in range(3):
            async with await create(s, user) as resp:
                assert resp.status == 201
        async with await create(s, user) as resp:
            err = await error_of(resp, 429, "too_many_conversations")
            assert int(resp.headers["Retry-After"]) >= 1
            assert err["limit"] == "conversations_per_user_per_minute"
            assert "too fast" in err["message"]
        async with s.post("/api/chat", json={"message": "a new one"},
                          headers=user.headers) as resp:
            await error_of(resp, 429, "too_many_conversations")
        async with await create(s, other) as resp:  # per user: others are not touched
            assert resp.status == 201
    assert await stored(server, user) == (3, 3)


async def test_the_conversation_count_cap_holds_and_frees_on_delete(custom: Custom) -> None:
    server = await custom(limits={"max_conversations_per_user": 2})
    user = await register_over_http(server.url, "hoarder")
    async with aiohttp.ClientSession(server.url) as s:
        first = await (await create(s, user)).json()
        async with s.post("/api/chat", json={"message": "second"}, headers=user.headers) as resp:
            assert resp.status == 200
        async with await create(s, user) as resp:
            err = await error_of(resp, 429, "too_many_conversations")
            assert err["limit"] == "max_conversations_per_user" and "2" in err["message"]
            assert "Retry-After" not in resp.headers
        async with s.post("/api/chat", json={"message": "third"}, headers=user.headers) as resp:
            await error_of(resp, 429, "too_many_conversations")
        # A message in a conversation the user keeps is fine.
        async with s.post("/api/chat", json={"message": "more", "conversation_id": first["id"]},
                          headers=user.headers) as resp:
            assert resp.status == 200
        assert (await stored(server, user))[0] == 2
        async with s.delete(f"/api/conversations/{first['id']}", headers=user.headers) as resp:
            assert resp.status == 204
        assert (await stored(server, user))[0] == 1
        async with await create(s, user) as resp:
            assert resp.status == 201


async def test_a_burst_of_creations_stops_exactly_at_the_cap(custom: Custom) -> None:
    server = await custom(limits={"max_conversations_per_user": 5})
    user = await register_over_http(server.url, "burst")
    async with aiohttp.ClientSession(server.url) as s:

        async def one() -> int:
            async with await create(s, user) as resp:
                return resp.status

        statuses = await asyncio.gather(*(one() for _ in range(40)))
    assert sorted(statuses) == [201] * 5 + [429] * 35
    assert await stored(server, user) == (5, 5)


async def test_the_reviews_flood_is_refused_with_the_shipped_default(custom: Custom) -> None:
    default = LimitsConfig().conversations_per_user_per_minute  # tests otherwise lift it
    server = await custom(limits={"conversations_per_user_per_minute": default})
    user = await register_over_http(server.url, "flood")
    async with aiohttp.ClientSession(server.url) as s:

        async def one() -> int:
            async with await create(s, user) as resp:
                return resp.status

        statuses = await asyncio.gather(*(one() for _ in range(200)))
    assert statuses.count(201) == default and statuses.count(429) == 200 - default
    assert await stored(server, user) == (default, default)


# --- stored characters -----------------------------------------------------------------------


async def test_stored_text_cap_is_413_on_every_write_and_stores_nothing(custom: Custom) -> None:
    server = await custom(limits={"max_stored_chars_per_user": 400})
    user = await register_over_http(server.url, "filler")
    async with aiohttp.ClientSession(server.url) as s:
        async with s.post("/api/chat", json={"message": "x" * 100}, headers=user.headers) as resp:
            assert resp.status == 200
            conv = (await resp.json())["conversation_id"]
        before = await stored(server, user)
        assert 200 < before[1] <= 300  # title, message and the reply
        room = 400 - before[1]

        async def refused(resp: aiohttp.ClientResponse) -> None:
            err = await error_of(resp, 413, "storage_quota_exceeded")
            assert err["limit"] == "max_stored_chars_per_user" and "400" in err["message"]
            assert await stored(server, user) == before

        async with s.post("/api/chat", json={"message": "y" * (room + 1),
                                             "conversation_id": conv},
                          headers=user.headers) as resp:
            await refused(resp)
        async with s.post("/api/chat", json={"message": "y" * room}, headers=user.headers) as resp:
            await refused(resp)  # a new conversation's title counts too
        async with s.post("/api/conversations", json={"title": "z" * (room + 1)},
                          headers=user.headers) as resp:
            await refused(resp)
        async with s.patch(f"/api/conversations/{conv}", json={"title": "z" * 200},
                           headers=user.headers) as resp:
            await refused(resp)
        messages = (await (await s.get(f"/api/conversations/{conv}",
                                       headers=user.headers)).json())["messages"]
        async with s.post("/api/chat", json={"conversation_id": conv, "message": "w" * 400,
                                             "edit_message_id": messages[0]["id"]},
                          headers=user.headers) as resp:
            await refused(resp)  # the edit is refused whole: the reply is not dropped either
        after = (await (await s.get(f"/api/conversations/{conv}",
                                    headers=user.headers)).json())["messages"]
        assert after == messages
        async with s.patch(f"/api/conversations/{conv}", json={"title": "short"},
                           headers=user.headers) as resp:
            assert resp.status == 200  # shorter titles always fit
        async with s.delete(f"/api/conversations/{conv}", headers=user.headers) as resp:
            assert resp.status == 204
        assert await stored(server, user) == (0, 0)  # deleting frees the room at once
        async with s.post("/api/chat", json={"message": "y" * room}, headers=user.headers) as resp:
            assert resp.status == 200


async def test_counters_follow_every_write_and_deleted_users(custom: Custom) -> None:
    server = await custom()
    await register_over_http(server.url, "admin")  # the last admin could not leave
    user = await register_over_http(server.url, "leaver")
    async with aiohttp.ClientSession(server.url) as s:
        async with s.post("/api/chat", json={"message": "hello"}, headers=user.headers) as resp:
            assert resp.status == 200
            body = await resp.json()
        conv = body["conversation_id"]
        assert (await stored(server, user))[1] > 0  # stored() checks the counter is the truth
        messages = (await (await s.get(f"/api/conversations/{conv}",
                                       headers=user.headers)).json())["messages"]
        async with s.post("/api/chat", json={"conversation_id": conv, "message": "edited " * 9,
                                             "edit_message_id": messages[0]["id"]},
                          headers=user.headers) as resp:
            assert resp.status == 200
        await stored(server, user)
        async with s.post("/api/chat", json={"conversation_id": conv, "regenerate": True},
                          headers=user.headers) as resp:
            assert resp.status == 200
        async with s.patch(f"/api/conversations/{conv}", json={"title": "a longer title"},
                           headers=user.headers) as resp:
            assert resp.status == 200
        await stored(server, user)
        async with s.delete("/api/auth/account", json={"password": user.password},
                            headers=user.headers) as resp:
            assert resp.status == 204, await resp.text()
    left = await value(server, "SELECT count(*) FROM user_storage WHERE user_id = ?", user.id)
    assert left == 0  # the admin's row stays; the leaver's went with the account


# --- per-user overrides ----------------------------------------------------------------------


async def test_a_users_own_limits_override_the_config(custom: Custom) -> None:
    server = await custom(limits={"max_conversations_per_user": 1,
                                  "conversations_per_user_per_minute": 1},
                          queue={"workers": 8, "max_running_per_user": 2})
    user = await register_over_http(server.url, "trusted")
    # A budget of the user's own, on real turns (the config has none).
    chat = server.app[keys.CHAT]
    budget = {"monthly_tokens_per_user": 1}
    turn = await chat.start(user.id, "spend", None, limits=budget)
    assert turn.job.max_running == 2  # the config's cap rides on the job
    async for _ in turn.follow():
        pass
    with pytest.raises(QuotaExceeded):
        await chat.start(user.id, "more", turn.conversation_id, limits=budget)
    # The user row's `limits`, as the principal carries it (the admin API sets them).
    limits = {"max_conversations_per_user": 3, "conversations_per_user_per_minute": 10,
              "max_running_per_user": 5}
    other = await chat.start(user.id, "no budget of my own", turn.conversation_id,
                             limits=limits)
    assert other.job.max_running == 5
    async for _ in other.follow():
        pass
    conversations = server.app[keys.CONVERSATIONS]
    for _ in range(2):
        await conversations.create(user.id, "t", limits)
    with pytest.raises(TooManyConversations):
        await conversations.create(user.id, "t", limits)
    caps = server.app[keys.CAPS]
    assert caps.running(limits) == 5 and caps.running({}) == 2 and caps.running(None) == 2
    assert caps.quota({"max_stored_chars_per_user": 0}).chars == 0  # 0: no cap, as in config
    assert caps.running({"max_running_per_user": -1}) == 2  # nonsense is ignored


# --- API keys --------------------------------------------------------------------------------


async def make_key(s: aiohttp.ClientSession, user: User,
                   name: str = "k") -> aiohttp.ClientResponse:
    """POST /api/keys as the user."""
    return await s.post("/api/keys", json={"name": name}, headers=user.headers)


async def keys_of(server: Running, user: User) -> int:
    """How many API keys the database holds for the user."""
    return int(await value(server, "SELECT count(*) FROM api_keys WHERE user_id = ?", user.id))


async def test_a_burst_of_key_creations_stops_exactly_at_the_cap(custom: Custom) -> None:
    server = await custom(limits={"max_api_keys_per_user": 5})
    user, other = [await register_over_http(server.url, n) for n in ("keymaker", "other")]
    async with aiohttp.ClientSession(server.url) as s:

        async def one() -> int:
            async with await make_key(s, user) as resp:
                return resp.status

        statuses = await asyncio.gather(*(one() for _ in range(40)))
        assert sorted(statuses) == [201] * 5 + [429] * 35
        async with await make_key(s, user) as resp:
            err = await error_of(resp, 429, "too_many_keys")
            assert err["limit"] == "max_api_keys_per_user"
            assert "5" in err["message"] and "delete" in err["message"]
        async with s.get("/api/keys", headers=user.headers) as resp:
            listed = (await resp.json())["keys"]
        assert len(listed) == 5
        async with s.delete(f"/api/keys/{listed[0]['id']}", headers=user.headers) as resp:
            assert resp.status == 204  # deleting one makes room for one
        async with await make_key(s, user) as resp:
            assert resp.status == 201
        async with await make_key(s, other) as resp:  # per user: others are not touched
            assert resp.status == 201
    assert await keys_of(server, user) == 5


async def test_key_names_lose_invisible_characters_like_titles(custom: Custom) -> None:
    server = await custom()
    user = await register_over_http(server.url, "spoofer")
    async with aiohttp.ClientSession(server.url) as s:
        async with await make_key(s, user, "\u202eexe.txt\u200b\nci ") as resp:
            assert resp.status == 201
            assert (await resp.json())["name"] == "exe.txt ci"
        async with s.get("/api/keys", headers=user.headers) as resp:
            assert [k["name"] for k in (await resp.json())["keys"]] == ["exe.txt ci"]
        async with await make_key(s, user, "\u202e\u200b\u2066 ") as resp:
            err = await error_of(resp, 400, "invalid_request")
            assert err["field"] == "name" and "visible" in err["message"]
    assert await keys_of(server, user) == 1


async def test_an_admins_override_of_the_key_cap(custom: Custom) -> None:
    server = await custom(limits={"max_api_keys_per_user": 1})
    admin, user = [await register_over_http(server.url, n) for n in ("boss", "builder")]
    status, body = await call(server, admin, "PUT", f"/api/admin/users/{user.id}/limits",
                              {"limits": {"max_api_keys_per_user": 3}})
    assert status == 200, body
    assert body["user"]["limits"] == {"max_api_keys_per_user": 3}
    async with aiohttp.ClientSession(server.url) as s:
        for _ in range(3):
            async with await make_key(s, user) as resp:
                assert resp.status == 201
        async with await make_key(s, user) as resp:
            await error_of(resp, 429, "too_many_keys")
        async with await make_key(s, admin) as resp:  # the config's cap for everyone else
            assert resp.status == 201
        async with await make_key(s, admin) as resp:
            await error_of(resp, 429, "too_many_keys")
    status, body = await call(server, admin, "PUT", f"/api/admin/users/{user.id}/limits",
                              {"limits": {"max_api_keys_per_user": -1}})
    assert status == 400 and body["error"]["code"] == "invalid_request"
    caps = server.app[keys.CAPS]
    assert caps.api_keys({"max_api_keys_per_user": 0}) == 0 and caps.api_keys(None) == 1
