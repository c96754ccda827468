"""Summaries of older turns end to end: a history that outgrows its budget is summarised by a
background job, the summary is sent ahead of the recent turns, shown on its message, and a
branch that leaves the summarised path does without it."""

from __future__ import annotations

import asyncio
from typing import Any

from server import keys
from server.runner import Running
from server.services.memory import SUMMARY_HEADING
from server.services.summaries import SYSTEM
from tests.support.admin import call_ok
from tests.support.app import User, register_over_http
from tests.support.browser import sim_config
from tests.support.replicas import seen_by
from tests.support.storage import value
from vllm_sim import SimServer


async def say(running: Running, user: User, message: str, conv: int | None = None,
              **more: Any) -> int:
    body = {"message": message, "conversation_id": conv, **more}
    return int((await call_ok(running, user, "POST", "/api/chat", body))["conversation_id"])


def summary_jobs(running: Running) -> int:
    return int(running.app[keys.METRICS].background.counts.get(("summary", "done"), 0))


async def until_summaries(running: Running, count: int) -> None:
    """Poll with a generous deadline (a safety net, not a timing assertion)."""
    deadline = asyncio.get_running_loop().time() + 30
    while summary_jobs(running) < count:
        assert asyncio.get_running_loop().time() < deadline, "no summary was made"
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # stored right after the job ends


async def summarising(custom: Any, **background: Any) -> tuple[Running, User]:
    running = await custom(memory={"max_history_messages": 4},
                           background={"summaries": True, **background})
    return running, await register_over_http(running.url, "longtalker")


async def test_older_turns_are_summarised_and_sent_ahead_of_the_recent_ones(
        custom: Any, simulator: SimServer) -> None:
    running, user = await summarising(custom)
    conv = await say(running, user, "q1 my cat is called Miso")
    await say(running, user, "q2", conv)
    assert summary_jobs(running) == 0  # everything still fits: nothing to summarise
    await say(running, user, "q3", conv)  # its history (4 messages) is at the limit
    await until_summaries(running, 1)
    job = (seen_by(simulator))[-1]["messages"]
    assert job[0]["content"] == SYSTEM
    assert "q1 my cat is called Miso" in job[1]["content"] and "q2" in job[1]["content"]
    shown = (await call_ok(running, user, "GET", f"/api/conversations/{conv}"))["messages"]
    marked = [m for m in shown if "summary" in m]
    assert [m["content"] for m in marked] == [shown[3]["content"]]  # q1 a1 q2 a2 covered
    summary = marked[0]["summary"]["content"]
    # The preview shows the system message the next turn will send.
    preview = await call_ok(running, user, "GET", f"/api/conversations/{conv}/prompt")
    assert f"{SUMMARY_HEADING}\n{summary}" in preview["messages"][0]["content"]
    await say(running, user, "q4", conv)
    turn = (seen_by(simulator))[-1]["messages"]
    assert turn[0]["role"] == "system" and f"{SUMMARY_HEADING}\n{summary}" in turn[0]["content"]
    assert [m["content"] for m in turn[1:]] == ["q3", shown[5]["content"], "q4"]
    assert turn[0]["content"] == preview["messages"][0]["content"]
    # A turn later its history is full again: the next summary takes the first one in.
    await say(running, user, "q5", conv)
    await until_summaries(running, 2)
    job = (seen_by(simulator))[-1]["messages"][1]["content"]
    assert summary in job and "q3" in job


async def test_a_branch_that_leaves_the_summarised_path_does_without(
        custom: Any, simulator: SimServer) -> None:
    running, user = await summarising(custom)
    conv = await say(running, user, "q1")
    for text in ("q2", "q3"):
        await say(running, user, text, conv)
    await until_summaries(running, 1)
    shown = (await call_ok(running, user, "GET", f"/api/conversations/{conv}"))["messages"]
    await say(running, user, "q2 again", conv, edit_message_id=shown[2]["id"])
    turn = (seen_by(simulator))[-1]["messages"]
    assert SUMMARY_HEADING not in turn[0]["content"]
    assert [m["content"] for m in turn[1:]] == ["q1", shown[1]["content"], "q2 again"]
    # Deleting the summarised message deletes its summary: the old branch goes without too.
    await call_ok(running, user, "DELETE", f"/api/conversations/{conv}/messages/{shown[2]['id']}")
    assert await value(running, "SELECT count(*) FROM summaries") == 0


async def test_a_new_branch_gets_its_own_summary_and_the_old_one_keeps_its(
        custom: Any, simulator: SimServer) -> None:
    await sim_config(simulator.root_url, echo=True)  # each summary echoes what it covers
    running, user = await summarising(custom)
    conv = await say(running, user, "q1")
    for text in ("q2", "q3"):
        await say(running, user, text, conv)
    await until_summaries(running, 1)
    shown = (await call_ok(running, user, "GET", f"/api/conversations/{conv}"))["messages"]
    [old] = [m["summary"]["content"] for m in shown if "summary" in m]
    await say(running, user, "q2 again", conv, edit_message_id=shown[2]["id"])
    await say(running, user, "q3 again", conv)  # the new branch's history overflows in turn
    await until_summaries(running, 2)
    job = (seen_by(simulator))[-1]["messages"][1]["content"]
    assert "q2 again" in job and old not in job
    again = (await call_ok(running, user, "GET", f"/api/conversations/{conv}"))["messages"]
    [new] = [m["summary"]["content"] for m in again if "summary" in m]
    await say(running, user, "q4 again", conv)
    assert f"{SUMMARY_HEADING}\n{new}" in (seen_by(simulator))[-1]["messages"][0]["content"]
    # Back on the old branch, its own summary is sent again.
    await call_ok(running, user, "POST", f"/api/conversations/{conv}/branch",
                  {"message_id": shown[-1]["id"]})
    await say(running, user, "q4", conv)
    system = (seen_by(simulator))[-1]["messages"][0]["content"]
    assert f"{SUMMARY_HEADING}\n{old}" in system and new not in system


async def test_no_summary_when_they_are_off(custom: Any, simulator: SimServer) -> None:
    running = await custom(memory={"max_history_messages": 4})
    user = await register_over_http(running.url, "forgetful")
    conv = await say(running, user, "q1")
    for text in ("q2", "q3", "q4"):
        await say(running, user, text, conv)
    await asyncio.sleep(0.3)
    assert summary_jobs(running) == 0
    assert all(SYSTEM not in str(r["messages"]) for r in seen_by(simulator))
    turn = (seen_by(simulator))[-1]["messages"]
    assert [m["content"] for m in turn[1:]][0] == "q2"  # older turns dropped, as before
