"""Memory suggestions end to end: proposals from what the user said wait for the user; only
accepted ones reach the model. The echoing simulator repeats the user's message, so each of
its lines comes back as a suggestion."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from server import keys
from server.runner import Running
from server.services.suggestions import SYSTEM, suggestions_from
from tests.support.admin import call_ok
from tests.support.app import User, register_over_http
from tests.support.replicas import seen_by
from vllm_sim import SimServer


def jobs(running: Running, outcome: str = "done") -> int:
    return int(running.app[keys.METRICS].background.counts.get(("memory", outcome), 0))


async def until_jobs(running: Running, count: int) -> None:
    """Poll with a generous deadline (a safety net, not a timing assertion)."""
    deadline = asyncio.get_running_loop().time() + 30
    while jobs(running) < count:
        assert asyncio.get_running_loop().time() < deadline, "no suggestion job ended"
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # stored right after the job ends


async def echoing(custom: Any, simulator: SimServer, name: str = "remembered",
                  **memories: Any) -> tuple[Running, User]:
    async with aiohttp.ClientSession() as s, \
            s.post(f"{simulator.root_url}/sim/config", json={"echo": True}) as r:
        assert r.status == 200
    running = await custom(memories=memories)
    return running, await register_over_http(running.url, name)


async def test_proposals_wait_for_the_user_and_only_accepted_ones_reach_the_model(
        custom: Any, simulator: SimServer) -> None:
    running, user = await echoing(custom, simulator, suggestions=True)
    chat = await call_ok(running, user, "POST", "/api/chat",
                      {"message": "I write Python 3.12 every day\nPlease answer in Spanish"})
    await until_jobs(running, 1)
    asked = (seen_by(simulator))[-1]["messages"]
    assert asked[0] == {"role": "system", "content": SYSTEM}
    memories = (await call_ok(running, user, "GET", "/api/memories"))["memories"]
    assert sorted(m["content"] for m in memories) == ["I write Python 3.12 every day",
                                                      "Please answer in Spanish"]
    assert {m["state"] for m in memories} == {"proposed"}
    conv = chat["conversation_id"]
    await call_ok(running, user, "POST", "/api/chat", {"message": "ok", "conversation_id": conv})
    assert "Spanish" not in (seen_by(simulator))[-1]["messages"][0]["content"]
    spanish = next(m for m in memories if "Spanish" in m["content"])
    await call_ok(running, user, "POST", f"/api/memories/{spanish['id']}/accept")
    await call_ok(running, user, "POST", "/api/chat", {"message": "ok", "conversation_id": conv})
    system = (seen_by(simulator))[-1]["messages"][0]["content"]
    assert "Please answer in Spanish" in system and "Python 3.12" not in system
    # The same facts again are not proposed twice.
    await call_ok(running, user, "POST", "/api/chat", {"message": "please  answer in SPANISH"})
    await until_jobs(running, 2)
    assert len((await call_ok(running, user, "GET", "/api/memories"))["memories"]) == 2


async def test_off_by_default_and_no_job_for_a_short_message(custom: Any,
                                                             simulator: SimServer) -> None:
    running, user = await echoing(custom, simulator)
    await call_ok(running, user, "POST", "/api/chat", {"message": "I live in Porto, Portugal"})
    on, other = await echoing(custom, simulator, "brief", suggestions=True)
    await call_ok(on, other, "POST", "/api/chat", {"message": "thanks!"})
    await asyncio.sleep(0.3)
    assert jobs(running) == 0 and jobs(on) == 0
    assert (await call_ok(running, user, "GET", "/api/memories"))["memories"] == []


def test_answers_become_at_most_three_short_facts() -> None:
    assert suggestions_from("NONE") == [] and suggestions_from(None) == []
    assert suggestions_from("- Likes tea\n\n2. \"Uses Vim\"\n* " + "x" * 300 + "\nA\nB") == \
        ["Likes tea", "Uses Vim", "A"]
