"""A conversation's own settings (system prompt, temperature, max tokens): stored with it,
changed with PATCH, applied to each of its turns, counted in the user's stored text."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from server import keys
from tests.support.app import error_of, register_over_http
from vllm_sim import SimServer


async def last_sent(simulator: SimServer) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{simulator.root_url}/sim/requests") as resp:
            sent: dict[str, Any] = (await resp.json())[-1]
            return sent


async def turn(http: aiohttp.ClientSession, user: Any, conv: int, **body: Any) -> None:
    async with http.post("/api/chat", json={"message": "hi", "conversation_id": conv, **body},
                         headers=user.headers) as resp:
        assert resp.status == 200, await resp.text()


async def patch(http: aiohttp.ClientSession, user: Any, conv: int,
                body: dict[str, Any]) -> dict[str, Any]:
    async with http.patch(f"/api/conversations/{conv}", json=body,
                          headers=user.headers) as resp:
        assert resp.status == 200, await resp.text()
        data: dict[str, Any] = await resp.json()
        return data


async def test_settings_apply_to_every_turn_until_changed(
        http: aiohttp.ClientSession, register: Any, simulator: SimServer) -> None:
    user = await register()
    async with http.post("/api/conversations", json={"title": "poems"},
                         headers=user.headers) as resp:
        conv = (await resp.json())["id"]
    row = await patch(http, user, conv, {"settings": {
        "system_prompt": "Answer in verse.", "temperature": 0.2, "max_tokens": 7}})
    assert row["settings"] == {"system_prompt": "Answer in verse.", "temperature": 0.2,
                               "max_tokens": 7}
    await turn(http, user, conv)
    sent = await last_sent(simulator)
    assert sent["messages"][0] == {"role": "system", "content": "Answer in verse."}
    assert sent["temperature"] == 0.2 and sent["max_tokens"] == 7
    await turn(http, user, conv, temperature=1.5, max_tokens=9)  # a turn's own wins
    sent = await last_sent(simulator)
    assert sent["temperature"] == 1.5 and sent["max_tokens"] == 9
    # null removes one; an empty system prompt means none at all; the title stays.
    row = await patch(http, user, conv, {"settings": {"temperature": None,
                                                      "system_prompt": ""}})
    assert row["settings"] == {"system_prompt": "", "max_tokens": 7}
    assert row["title"] == "poems"
    await turn(http, user, conv)
    sent = await last_sent(simulator)
    assert sent["messages"][0]["role"] == "user" and sent["temperature"] == 0.7
    async with http.get(f"/api/conversations/{conv}", headers=user.headers) as resp:
        assert (await resp.json())["settings"] == {"system_prompt": "", "max_tokens": 7}
    other = await register()
    async with http.patch(f"/api/conversations/{conv}", json={"settings": {}},
                          headers=other.headers) as resp:
        await error_of(resp, 404, "not_found")  # another's: as if none


async def test_settings_count_towards_the_stored_text_cap(
        http: aiohttp.ClientSession, register: Any, server: Any) -> None:
    user = await register()
    async with http.post("/api/conversations", json={"title": "t"},
                         headers=user.headers) as resp:
        conv = (await resp.json())["id"]
    async with http.patch(f"/api/conversations/{conv}",
                          json={"settings": {"system_prompt": "p" * 8000}},
                          headers=user.headers) as resp:
        assert resp.status == 200
    quotas = server.app[keys.STORAGE].quotas
    conversations, chars = await quotas.stored(user.id)
    assert conversations == 1 and chars >= 8000 + 1  # the title and the settings' text
    async with http.delete(f"/api/conversations/{conv}", headers=user.headers) as resp:
        assert resp.status == 204
    assert await quotas.stored(user.id) == (0, 0)  # and given back with the conversation


async def test_a_new_conversation_takes_its_settings_with_its_first_turn(
        http: aiohttp.ClientSession, register: Any, server: Any,
        simulator: SimServer) -> None:
    user = await register()
    own = {"system_prompt": "Answer in verse.", "temperature": 0.2, "max_tokens": 7}
    async with http.post("/api/chat", json={"message": "hi", "settings": own},
                         headers=user.headers) as resp:
        assert resp.status == 200, await resp.text()
        conv = (await resp.json())["conversation_id"]
    sent = await last_sent(simulator)  # the first turn already runs with them
    assert sent["messages"] == [{"role": "system", "content": "Answer in verse."},
                                {"role": "user", "content": "hi"}]
    assert sent["temperature"] == 0.2 and sent["max_tokens"] == 7
    async with http.get(f"/api/conversations/{conv}", headers=user.headers) as resp:
        assert (await resp.json())["settings"] == own  # stored with the conversation
    await turn(http, user, conv)  # and used by the next turn, as if PATCHed
    sent = await last_sent(simulator)
    assert sent["messages"][0]["content"] == "Answer in verse." and sent["max_tokens"] == 7
    # `null` ones are as absent; an empty system prompt is kept (none at all is sent).
    async with http.post("/api/chat", json={"message": "hi", "settings": {
            "system_prompt": "", "temperature": None}}, headers=user.headers) as resp:
        assert resp.status == 200, await resp.text()
        other = (await resp.json())["conversation_id"]
    assert (await last_sent(simulator))["messages"] == [{"role": "user", "content": "hi"}]
    async with http.get(f"/api/conversations/{other}", headers=user.headers) as resp:
        assert (await resp.json())["settings"] == {"system_prompt": ""}
    # Their text counts towards the stored-text cap, like a PATCH's, and goes with them.
    quotas = server.app[keys.STORAGE].quotas
    conversations, chars = await quotas.stored(user.id)
    assert conversations == 2 and chars >= len(orjson.dumps(own)) + len('{"system_prompt":""}')
    for gone in (conv, other):
        async with http.delete(f"/api/conversations/{gone}", headers=user.headers) as resp:
            assert resp.status == 204
    assert await quotas.stored(user.id) == (0, 0)


async def test_a_first_turns_settings_are_checked_as_a_patch_and_nothing_is_kept(
        http: aiohttp.ClientSession, register: Any, server: Any) -> None:
    user = await register()
    quotas = server.app[keys.STORAGE].quotas
    for settings, field in [({"temperature": 3}, "temperature"),
                            ({"max_tokens": 1.5}, "max_tokens"),
                            ({"system_prompt": "p" * 8001}, "system_prompt"),
                            ({"top_p": 1}, "settings"), ("verse", "settings")]:
        async with http.post("/api/chat", json={"message": "hi", "settings": settings},
                             headers=user.headers) as resp:
            assert (await error_of(resp, 400, "invalid_request"))["field"] == field
        async with http.patch("/api/conversations/1", json={"settings": settings},
                              headers=user.headers) as resp:
            assert (await error_of(resp, 400, "invalid_request"))["field"] == field
    assert await quotas.stored(user.id) == (0, 0)  # no conversation was made
    async with http.post("/api/chat", json={"message": "hi"}, headers=user.headers) as resp:
        conv = (await resp.json())["conversation_id"]
    async with http.post("/api/chat", json={"message": "hi", "conversation_id": conv,
                                            "settings": {"temperature": 1}},
                         headers=user.headers) as resp:
        assert (await error_of(resp, 400, "invalid_request"))["field"] == "settings"


async def test_a_first_turns_settings_past_the_stored_text_cap_keep_nothing(
        custom: Any) -> None:
    server = await custom(limits={"max_stored_chars_per_user": 400})
    user = await register_over_http(server.url, "capped")
    async with aiohttp.ClientSession(server.url) as http:
        async with http.post("/api/chat", json={"message": "hi", "settings": {
                "system_prompt": "p" * 390}}, headers=user.headers) as resp:
            await error_of(resp, 413, "storage_quota_exceeded")
        assert await server.app[keys.STORAGE].quotas.stored(user.id) == (0, 0)
        async with http.get("/api/conversations", headers=user.headers) as resp:
            assert (await resp.json())["conversations"] == []
