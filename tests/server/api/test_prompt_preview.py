"""GET /api/conversations/{id}/prompt and GET /api/prompt: exactly what the next turn sends
(system prompt with memories, then the history), without the new message."""

from __future__ import annotations

from typing import Any

import aiohttp

from server import keys
from server.runner import Running
from tests.support.app import User, db_of, error_of
from vllm_sim import SimServer


async def preview(http: aiohttp.ClientSession, user: User, path: str) -> dict[str, Any]:
    async with http.get(path, headers=user.headers) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        assert set(body) == {"messages", "model", "max_tokens", "temperature"}
        return body


async def turn(http: aiohttp.ClientSession, user: User, message: str,
               **body: Any) -> dict[str, Any]:
    async with http.post("/api/chat", json={"message": message, **body},
                         headers=user.headers) as resp:
        assert resp.status == 200, await resp.text()
        reply: dict[str, Any] = await resp.json()
        return reply


async def last_sent(simulator: SimServer) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{simulator.root_url}/sim/requests") as resp:
            sent: dict[str, Any] = (await resp.json())[-1]
            return sent


def as_sent(shown: dict[str, Any], message: str) -> dict[str, Any]:
    """The preview as the model would receive it once `message` is added."""
    return {"messages": [*shown["messages"], {"role": "user", "content": message}],
            "max_tokens": shown["max_tokens"], "temperature": shown["temperature"]}


def sent_part(sent: dict[str, Any]) -> dict[str, Any]:
    return {key: sent[key] for key in ("messages", "max_tokens", "temperature")}


async def test_the_preview_is_what_the_next_turn_sends(http: aiohttp.ClientSession,
                                                       register: Any,
                                                       simulator: SimServer) -> None:
    user = await register()
    async with http.post("/api/memories", json={"content": "I write Python 3.12"},
                         headers=user.headers) as resp:
        assert resp.status == 201
    async with http.patch("/api/account", json={"settings": {"system_prompt": "Be brief."}},
                          headers=user.headers) as resp:
        assert resp.status == 200
    shown = await preview(http, user, "/api/prompt")
    assert shown["messages"] == [{"role": "system", "content":
                                  "Be brief.\n\nThings the user asked you to remember:\n"
                                  "- I write Python 3.12"}]
    conv = (await turn(http, user, "first"))["conversation_id"]
    assert sent_part(await last_sent(simulator)) == as_sent(shown, "first")
    async with http.patch(f"/api/conversations/{conv}",
                          json={"settings": {"temperature": 0.3, "max_tokens": 9}},
                          headers=user.headers) as resp:
        assert resp.status == 200
    for message in ("second", "third"):
        shown = await preview(http, user, f"/api/conversations/{conv}/prompt")
        assert shown["temperature"] == 0.3 and shown["max_tokens"] == 9
        assert [m["role"] for m in shown["messages"]][-2:] == ["user", "assistant"]
        await turn(http, user, message, conversation_id=conv)
        assert sent_part(await last_sent(simulator)) == as_sent(shown, message)
    assert shown["model"] == (await last_sent(simulator))["model"] == "vllm-simulator"


async def test_the_history_budget_applies_as_on_a_turn(custom: Any,
                                                       simulator: SimServer) -> None:
    # Long user messages (~54 tokens each; short replies) and a 100-token budget: the oldest
    # one is left out by the token budget, not by the message count.
    server = await custom(memory={"max_history_messages": 10, "max_history_tokens": 100,
                                  "system_prompt": ""})
    async with aiohttp.ClientSession(server.url) as http:
        async with http.post("/api/auth/register",
                             json={"username": "budget", "password": "quiet-lantern-42"}) as r:
            user = User(await r.json(), "quiet-lantern-42")
        conv = (await turn(http, user, "a " * 100))["conversation_id"]
        await turn(http, user, "b " * 100, conversation_id=conv)
        shown = await preview(http, user, f"/api/conversations/{conv}/prompt")
        assert [m["role"] for m in shown["messages"]] == ["assistant", "user", "assistant"]
        await turn(http, user, "three", conversation_id=conv)
        assert sent_part(await last_sent(simulator)) == as_sent(shown, "three")


async def test_a_preview_reads_no_more_than_the_conversation(
        http: aiohttp.ClientSession, register: Any, server: Running) -> None:
    user = await register()
    conv = (await turn(http, user, "hello"))["conversation_id"]
    await preview(http, user, f"/api/conversations/{conv}/prompt")
    reads = db_of(server).stats.reads
    await preview(http, user, f"/api/conversations/{conv}/prompt")
    assert db_of(server).stats.reads == reads + 1  # the history; the profile is cached
    assert server.app[keys.PROFILES].hits > 0


async def test_model_choice_and_refusals(http: aiohttp.ClientSession, register: Any) -> None:
    owner, other = await register(), await register()
    conv = (await turn(http, owner, "mine"))["conversation_id"]
    async with http.get(f"/api/conversations/{conv}/prompt", headers=other.headers) as resp:
        await error_of(resp, 404, "not_found")
    async with http.get("/api/conversations/999999/prompt", headers=owner.headers) as resp:
        await error_of(resp, 404, "not_found")
    async with http.get("/api/prompt?model=nope", headers=owner.headers) as resp:
        await error_of(resp, 404, "model_not_found")
    shown = await preview(http, owner, "/api/prompt?model=vllm-simulator")
    assert shown["model"] == "vllm-simulator"
    assert shown["messages"] == [{"role": "system", "content": "You are a helpful assistant."}]
    async with http.get("/api/prompt") as resp:
        await error_of(resp, 401, "unauthorized")


async def test_the_preview_follows_the_branch_shown(http: aiohttp.ClientSession,
                                                    register: Any,
                                                    simulator: SimServer) -> None:
    user = await register()
    first = await turn(http, user, "one")
    conv = first["conversation_id"]
    second = await turn(http, user, "two", conversation_id=conv)
    await turn(http, user, "deux", conversation_id=conv,
               edit_message_id=second["message"]["parent_id"])  # a new branch beside "two"
    path = f"/api/conversations/{conv}/prompt"
    shown = await preview(http, user, path)
    assert [m["content"] for m in shown["messages"] if m["role"] == "user"] == ["one", "deux"]
    async with http.post(f"/api/conversations/{conv}/branch",
                         json={"message_id": second["message"]["parent_id"]},
                         headers=user.headers) as resp:
        assert resp.status == 200, await resp.text()
    shown = await preview(http, user, path)
    assert [m["content"] for m in shown["messages"] if m["role"] == "user"] == ["one", "two"]
    await turn(http, user, "three", conversation_id=conv)
    assert sent_part(await last_sent(simulator)) == as_sent(shown, "three")


async def test_a_new_chats_preview_with_the_settings_its_first_turn_takes(
        http: aiohttp.ClientSession, register: Any, simulator: SimServer) -> None:
    user = await register()
    async with http.post("/api/memories", json={"content": "I write Python 3.12"},
                         headers=user.headers) as resp:
        assert resp.status == 201
    own = {"system_prompt": "Answer in verse.", "temperature": 0.3, "max_tokens": None}
    async with http.post("/api/prompt", json={"settings": own, "model": "vllm-simulator"},
                         headers=user.headers) as resp:
        assert resp.status == 200, await resp.text()
        shown = await resp.json()
    assert shown["messages"] == [{"role": "system", "content":
                                  "Answer in verse.\n\nThings the user asked you to remember:\n"
                                  "- I write Python 3.12"}]
    assert shown["temperature"] == 0.3 and shown["model"] == "vllm-simulator"
    await turn(http, user, "first", settings=own)
    assert sent_part(await last_sent(simulator)) == as_sent(shown, "first")
    async with http.post("/api/prompt", json={}, headers=user.headers) as resp:
        assert resp.status == 200  # no settings: as GET /api/prompt
        assert await resp.json() == await preview(http, user, "/api/prompt")
    for body, status, field in [({"settings": {"temperature": 3}}, 400, "temperature"),
                                ({"settings": {"top_p": 1}}, 400, "settings"),
                                ({"model": ""}, 400, "model"), ({"nope": 1}, 400, "nope")]:
        async with http.post("/api/prompt", json=body, headers=user.headers) as resp:
            assert (await error_of(resp, status, "invalid_request"))["field"] == field
    async with http.post("/api/prompt", json={"model": "nope"}, headers=user.headers) as resp:
        await error_of(resp, 404, "model_not_found")
