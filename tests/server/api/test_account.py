"""/api/account: the account's own settings (default system prompt, theme), and where the
default system prompt stands among the others on every turn."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from server import keys
from server.runner import Running
from server.services.profile import MEMORY_HEADING
from tests.support.app import User, error_of
from vllm_sim import SimServer

DEFAULTS = {"system_prompt": None, "theme": "system"}


async def account(http: aiohttp.ClientSession, user: User) -> dict[str, Any]:
    async with http.get("/api/account", headers=user.headers) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def configure(http: aiohttp.ClientSession, user: User,
                    settings: dict[str, Any]) -> dict[str, Any]:
    async with http.patch("/api/account", json={"settings": settings},
                          headers=user.headers) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def sent_system(http: aiohttp.ClientSession, user: User, simulator: SimServer,
                      **body: Any) -> str | None:
    """Run a turn; the system message the model got (None: there was none)."""
    async with http.post("/api/chat", json={"message": "hi", **body},
                         headers=user.headers) as resp:
        assert resp.status == 200, await resp.text()
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{simulator.root_url}/sim/requests") as resp:
            first = (await resp.json())[-1]["messages"][0]
    return str(first["content"]) if first["role"] == "system" else None


async def test_defaults_then_changes_then_back(http: aiohttp.ClientSession,
                                               register: Any) -> None:
    user = await register()
    assert await account(http, user) == {"username": user.name, "settings": DEFAULTS}
    body = await configure(http, user, {"theme": "dark"})
    assert body == {"username": user.name, "settings": {"system_prompt": None, "theme": "dark"}}
    body = await configure(http, user, {"system_prompt": "Be brief."})
    assert body["settings"] == {"system_prompt": "Be brief.", "theme": "dark"}
    assert await account(http, user) == body
    assert (await configure(http, user, {}))["settings"] == body["settings"]  # nothing to do
    body = await configure(http, user, {"theme": None, "system_prompt": None})
    assert body["settings"] == DEFAULTS
    other = await register()
    await configure(http, other, {"theme": "light"})
    assert (await account(http, user))["settings"] == DEFAULTS  # each account its own


@pytest.mark.parametrize("body", [
    {}, {"settings": None}, {"settings": []}, {"settings": {"theme": "blue"}},
    {"settings": {"theme": 1}}, {"settings": {"system_prompt": 5}},
    {"settings": {"system_prompt": "x" * 8001}}, {"settings": {"temperature": 1}},
    {"settings": {}, "username": "x"},
])
async def test_bad_settings_are_400(http: aiohttp.ClientSession, register: Any,
                                    body: dict[str, Any]) -> None:
    user = await register()
    async with http.patch("/api/account", json=body, headers=user.headers) as resp:
        await error_of(resp, 400, "invalid_request")
    assert (await account(http, user))["settings"] == DEFAULTS


async def test_settings_count_towards_the_stored_text_cap(http: aiohttp.ClientSession,
                                                          register: Any,
                                                          server: Running) -> None:
    user = await register()
    quotas = server.app[keys.STORAGE].quotas
    await configure(http, user, {"system_prompt": "p" * 1000})
    assert 1000 < (await quotas.stored(user.id))[1] < 1100
    await configure(http, user, {"system_prompt": None})
    assert await quotas.stored(user.id) == (0, 0)


async def test_the_accounts_system_prompt_is_the_default_of_every_chat(
        http: aiohttp.ClientSession, register: Any, simulator: SimServer) -> None:
    user = await register()
    assert await sent_system(http, user, simulator) == "You are a helpful assistant."
    await configure(http, user, {"system_prompt": "Answer like a pirate."})
    assert await sent_system(http, user, simulator) == "Answer like a pirate."
    # A conversation's own system prompt wins over the account's.
    async with http.post("/api/conversations", headers=user.headers) as resp:
        conv = (await resp.json())["id"]
    async with http.patch(f"/api/conversations/{conv}",
                          json={"settings": {"system_prompt": "Answer in verse."}},
                          headers=user.headers) as resp:
        assert resp.status == 200
    assert await sent_system(http, user, simulator, conversation_id=conv) == "Answer in verse."
    # "" on the account: no system prompt at all; the memories still go, on their own.
    await configure(http, user, {"system_prompt": ""})
    assert await sent_system(http, user, simulator) is None
    async with http.post("/api/memories", json={"content": "I am Ann"},
                         headers=user.headers) as resp:
        assert resp.status == 201
    assert await sent_system(http, user, simulator) == f"{MEMORY_HEADING}\n- I am Ann"
    await configure(http, user, {"system_prompt": None})  # back to the configured one
    assert await sent_system(http, user, simulator) == \
        f"You are a helpful assistant.\n\n{MEMORY_HEADING}\n- I am Ann"


async def test_precedence_conversation_then_account_then_model_then_config(
        serve: Any, make_sim: Any) -> None:
    sim = await make_sim(reply_tokens=2)
    url = sim.url
    server = await serve([
        {"name": "plain", "served_name": "vllm-simulator", "replicas": [{"url": url}]},
        {"name": "coder", "served_name": "vllm-simulator", "replicas": [{"url": url}],
         "system_prompt": "You write code."},
    ], memory={"system_prompt": "From the config."})
    async with aiohttp.ClientSession(server.url) as http:
        async with http.post("/api/auth/register",
                             json={"username": "order", "password": "quiet-lantern-42"}) as r:
            user = User(await r.json(), "quiet-lantern-42")
        assert await sent_system(http, user, sim, model="plain") == "From the config."
        assert await sent_system(http, user, sim, model="coder") == "You write code."
        await configure(http, user, {"system_prompt": "Mine."})
        assert await sent_system(http, user, sim, model="coder") == "Mine."
        async with http.post("/api/conversations", headers=user.headers) as resp:
            conv = (await resp.json())["id"]
        async with http.patch(f"/api/conversations/{conv}",
                              json={"settings": {"system_prompt": "This chat's."}},
                              headers=user.headers) as resp:
            assert resp.status == 200
        assert await sent_system(http, user, sim, model="coder",
                                 conversation_id=conv) == "This chat's."
