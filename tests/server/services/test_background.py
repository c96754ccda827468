"""server/services/background.py on the real app and the simulator over TCP: results, drops,
shutdown, and the proof that background jobs never delay an interactive turn."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from server import keys
from server.runner import Running, start
from tests.support.app import User, make_config, register_over_http
from vllm_sim import SimServer
from workers.job import Job

MakeSim = Callable[..., Awaitable[SimServer]]


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def counted(running: Running, kind: str, outcome: str) -> int:
    return int(running.app[keys.METRICS].background.counts.get((kind, outcome), 0))


async def serve(tmp_path: Path, sim: SimServer, workers: int, **background: Any) -> Running:
    return await start(make_config(tmp_path, sim.url, queue={
        "workers": workers, "max_size": 256, "max_per_user": 0}, background=background))


async def test_a_background_job_gives_its_text_and_is_counted(tmp_path: Path,
                                                              make_sim: MakeSim) -> None:
    sim = await make_sim(echo=True)
    running = await serve(tmp_path, sim, 2)
    try:
        text = await running.app[keys.BACKGROUND].submit("summary", 1, "",
                                                         ask("short summary"), 16)
        assert text == "short summary"
        assert counted(running, "summary", "done") == 1
        async with aiohttp.ClientSession(running.url) as s:
            async with s.get("/metrics") as resp:
                body = await resp.text()
        assert 'chatgate_background_jobs_total{kind="summary",outcome="done"} 1.0' in body
        assert "chatgate_background_waiting 0.0" in body
    finally:
        await running.stop()


async def test_beyond_its_bound_a_background_job_is_dropped_not_an_error(
        tmp_path: Path, make_sim: MakeSim) -> None:
    sim = await make_sim(echo=True, ttft_ms=300)
    running = await serve(tmp_path, sim, 1, max_waiting=2)
    background = running.app[keys.BACKGROUND]
    try:
        first = background.submit("title", 1, "", ask("runs"), 8)
        pool = running.app[keys.POOL]
        while pool.queue.background_running == 0:  # taken by the one worker
            await asyncio.sleep(0.01)
        waiting = [background.submit("title", i, "", ask(f"waits {i}"), 8) for i in (2, 3)]
        dropped = background.submit("title", 4, "", ask("no room"), 8)
        assert dropped.done() and dropped.result() is None
        assert counted(running, "title", "dropped") == 1 and pool.stats.dropped == 1
        assert await asyncio.gather(first, *waiting) == ["runs", "waits 2", "waits 3"]
    finally:
        await running.stop()


async def test_at_shutdown_background_jobs_are_cancelled_while_a_turn_finishes(
        tmp_path: Path, make_sim: MakeSim) -> None:
    sim = await make_sim(echo=True, tpot_ms=40)
    running = await serve(tmp_path, sim, 2, share=0.5)
    background = running.app[keys.BACKGROUND]
    user = await register_over_http(running.url, "stays")
    words = " ".join(f"w{i}" for i in range(12))  # ~0.5 s of reply
    bg_running = background.submit("title", 2, "", ask(words), 32)
    while running.app[keys.POOL].queue.background_running == 0:
        await asyncio.sleep(0.01)
    async with aiohttp.ClientSession(running.url) as s:
        turn = asyncio.create_task(s.post("/api/chat", json={"message": words},
                                          headers=user.headers))
        while not running.app[keys.CHAT].turns.running():
            await asyncio.sleep(0.01)
        bg_queued = background.submit("title", 3, "", ask("never sent"), 8)
        await running.stop()
        resp = await turn
        assert resp.status == 200 and (await resp.json())["message"]["content"] == words
    assert bg_running.result() is None and bg_queued.result() is None
    assert counted(running, "title", "cancelled") == 2
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{sim.root_url}/sim/requests") as resp:
            asked = [b["messages"][-1]["content"] for b in await resp.json()]
    assert "never sent" not in asked


# --- the proof under load -------------------------------------------------------------------


async def test_under_load_no_interactive_turn_waits_for_a_background_job(
        tmp_path: Path, make_sim: MakeSim) -> None:
    """Many background jobs queued, a steady stream of chats through the app: no background
    job is ever taken while an interactive job waits, and never more than the cap run."""
    sim = await make_sim(echo=True, ttft_ms=20, tpot_ms=5)
    running = await serve(tmp_path, sim, 8, share=0.25)  # a cap of 2 background jobs
    app = running.app
    cap = app[keys.POOL].background_cap
    assert cap == 2
    background, chat = app[keys.BACKGROUND], app[keys.CHAT]
    try:
        users = [await register_over_http(running.url, f"load{i}") for i in range(12)]
        results = [background.submit("summary", f"owner{i % 5}", "",
                                     ask(f"background {i} " + "x " * 8), 16)
                   for i in range(60)]
        bg_jobs = background.jobs()
        assert len(bg_jobs) == 60
        seen: dict[int, Job] = {}  # the interactive turns' jobs, gathered as they run
        stop = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():
                for turn in chat.turns.running():
                    seen[id(turn.job)] = turn.job
                await asyncio.sleep(0.001)

        async def chats(s: aiohttp.ClientSession, user: User, n: int) -> None:
            for k in range(n):
                message = f"{user.name} turn {k} " + "y " * 10
                async with s.post("/api/chat", json={"message": message},
                                  headers=user.headers) as resp:
                    assert resp.status == 200, await resp.text()

        watcher = asyncio.create_task(watch())
        async with aiohttp.ClientSession(running.url,
                                         connector=aiohttp.TCPConnector(limit=0)) as s:
            await asyncio.gather(*(chats(s, user, 5) for user in users))
        stop.set()
        await watcher
        assert all(text is not None for text in await asyncio.gather(*results))
    finally:
        await running.stop()
    interactive = list(seen.values())
    assert len(interactive) == 60  # every turn's job was seen
    assert all(j.times.taken is not None for j in interactive + bg_jobs)
    # 1. No background job was taken while an interactive one waited (queued, not taken).
    overtaken = [(i, b) for b in bg_jobs for i in interactive
                 if i.times.queued < b.times.taken < i.times.taken]  # type: ignore[operator]
    assert not overtaken
    # 2. Background jobs running at once never passed the cap (their [taken, ended] spans).
    edges = sorted([(j.times.taken, 1) for j in bg_jobs] +
                   [(j.times.ended, -1) for j in bg_jobs])  # an end sorts before a start
    running_now = peak = 0
    for _, step in edges:
        running_now += step
        peak = max(peak, running_now)
    assert peak <= cap
    # The load did make turns wait and go ahead of background jobs queued before them.
    assert any(b.times.queued < i.times.queued and i.times.taken < b.times.taken  # type: ignore[operator]
               for b in bg_jobs for i in interactive)


async def test_background_jobs_never_take_a_models_last_room_from_a_turn(
        tmp_path: Path, make_sim: MakeSim) -> None:
    """A replica with `max_concurrency`: background jobs (within their share of the workers)
    must not hold all of its room, or a chat turn waits for them to end."""
    sim = await make_sim(ttft_ms=20, tpot_ms=20, reply_tokens=200)  # 4 s a background job
    models = [{"name": "chat", "served_name": sim.settings.model,
               "replicas": [{"url": sim.url, "max_concurrency": 2}]}]
    # 8 workers x 0.25: two background jobs may run, as many as the replica takes.
    running = await start(make_config(tmp_path, sim.url, models=models, queue={
        "workers": 8, "max_size": 64, "max_per_user": 0}, background={"share": 0.25}))
    app = running.app
    background, chat = app[keys.BACKGROUND], app[keys.CHAT]
    try:
        user = await register_over_http(running.url, "turns")
        results = [background.submit("summary", f"owner{i}", "", ask(f"long {i}"), 400)
                   for i in range(2)]
        bg_jobs = background.jobs()
        queue = app[keys.POOL].queue
        for _ in range(2000):  # taken as far as they may be (a generous deadline, polled)
            if any(j.times.taken is not None for j in bg_jobs) and queue.empty():
                break
            await asyncio.sleep(0.01)
        seen: list[Job] = []
        async with aiohttp.ClientSession(running.url) as s:
            post = asyncio.create_task(s.post("/api/chat", json={
                "message": "a turn", "max_tokens": 2}, headers=user.headers))
            while not chat.turns.running() and not post.done():
                await asyncio.sleep(0.001)
            seen += [t.job for t in chat.turns.running()]
            async with await post as resp:
                assert resp.status == 200, await resp.text()
        for result in results:
            result.cancel()
    finally:
        await running.stop()
    [turn] = seen
    assert turn.times.taken is not None
    # The turn was taken while the background job still ran, not after it ended.
    assert all(j.times.ended is None or j.times.ended > turn.times.taken for j in bg_jobs), \
        "the chat turn waited for a background job to free the model's room"
