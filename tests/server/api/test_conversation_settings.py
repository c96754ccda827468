"""A conversation's own settings (system prompt, temperature, max tokens): stored with it,
changed with PATCH, applied to each of its turns, counted in the user's stored text."""

from __future__ import annotations

from typing import Any

import aiohttp

from server import keys
from tests.support.app import error_of
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
