"""Helpers for the workers' tests: routers over real sessions, simulator faults, job events."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from vllm_sim import DEFAULT_MODEL, SimServer
from workers.job import (
    Completion,
    CompletionRequest,
    Delta,
    Ending,
    Event,
    Failed,
    Finished,
    Job,
    Started,
)
from workers.probe import ProbeSettings
from workers.replica import HealthSettings, Replica, ReplicaSpec
from workers.router import AffinitySettings, Attempt, ModelRoute, Router
from workers.stream import Progress
from workers.upstream import UpstreamClient, UpstreamSettings, create_session

TEXT = "one two three four five six seven eight"
WORDS = ["one", " two", " three", " four", " five", " six", " seven", " eight"]


@dataclass(frozen=True)
class Knobs(HealthSettings, ProbeSettings, AffinitySettings):
    """Every routing knob in one object, as the server's `routing` section holds them."""


class Routes:
    """Builds replicas, model routes and routers over sessions from create_session, with fast
    retries; close() closes every session it opened."""

    def __init__(self) -> None:
        self.sessions: list[aiohttp.ClientSession] = []
        self.upstream = UpstreamSettings(first_token_timeout_s=10, retry_backoff_s=0.01)

    def replica(self, url: str, *, api_key: str = "", max_concurrency: int = 0,
                weight: float = 1.0, knobs: Knobs | None = None, pool_size: int = 0,
                **upstream: Any) -> Replica:
        """One replica at `url`; `upstream` overrides UpstreamSettings for its session, which
        may open `pool_size` connections (default: its max_concurrency, or 16)."""
        settings = dataclasses.replace(self.upstream, **upstream)
        session = create_session(pool_size or max_concurrency or 16, settings, api_key)
        self.sessions.append(session)
        spec = ReplicaSpec(url, api_key, max_concurrency, weight)
        return Replica(spec, UpstreamClient(session, url, api_key=api_key), knobs or Knobs())

    def route(self, replicas: Sequence[str | Replica], name: str = "m",
              served_name: str = DEFAULT_MODEL, knobs: Knobs | None = None,
              **upstream: Any) -> ModelRoute:
        """A model over these replicas (URLs become replicas with default settings)."""
        made = [r if isinstance(r, Replica) else self.replica(r, knobs=knobs, **upstream)
                for r in replicas]
        return ModelRoute(name, served_name, made, knobs or Knobs())

    def router(self, *routes: ModelRoute, **upstream: Any) -> Router:
        """A router over these models; `upstream` sets its retries and backoff."""
        return Router(routes, dataclasses.replace(self.upstream, **upstream))

    async def close(self) -> None:
        """Close every session opened here."""
        for session in self.sessions:
            await session.close()


def job(owner: str = "alice", text: str = TEXT, max_tokens: int = 64, model: str = "",
        affinity: Any = None) -> Job:
    """A job asking an echoing simulator to repeat `text`."""
    return Job(owner=owner, request=CompletionRequest([{"role": "user", "content": text}],
                                                      max_tokens, 0.0),
               model=model, affinity=affinity)


async def collect(j: Job) -> list[Event]:
    """Every event of a job up to and including its last (Finished or Failed)."""
    events: list[Event] = []
    while True:
        event = await asyncio.wait_for(j.events.get(), 30)  # type: ignore[attr-defined]
        events.append(event)
        if isinstance(event, (Finished, Failed)):
            return events


async def next_event(j: Job, kind: type) -> Event:
    """Wait for the job's next event of this kind, skipping others."""
    while True:
        event: Event = await asyncio.wait_for(j.events.get(), 30)  # type: ignore[attr-defined]
        if isinstance(event, kind):
            return event
        assert not isinstance(event, (Finished, Failed)), event


def assert_finished(events: list[Event], text: str = TEXT) -> None:
    """Started, one or more Deltas, Finished, and the deltas add up to the reply."""
    assert isinstance(events[0], Started), events
    assert isinstance(events[-1], Finished), events
    middle = events[1:-1]
    assert middle and all(isinstance(e, Delta) for e in middle), events
    reply = events[-1].completion.text
    assert "".join(e.text for e in middle if isinstance(e, Delta)) == reply == text


async def fault(control: aiohttp.ClientSession, sim: SimServer, mode: str, count: int = 1,
                after_tokens: int = 0) -> None:
    """Queue a fault for the simulator's next `count` generation requests."""
    body = {"mode": mode, "count": count, "after_tokens": after_tokens}
    async with control.post(f"{sim.root_url}/sim/faults", json=body) as resp:
        assert resp.status == 200, await resp.text()


async def sim_requests(control: aiohttp.ClientSession, sim: SimServer) -> list[dict[str, Any]]:
    """The generation request bodies the simulator received, oldest first."""
    async with control.get(f"{sim.root_url}/sim/requests") as resp:
        assert resp.status == 200
        data: list[dict[str, Any]] = await resp.json()
        return data


async def wait_for(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll until cond() holds (a safety net, not a timing assertion)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def attempt_of(j: Job) -> Attempt:
    """The pool's attempt for a chat job: stream the reply into the job's events."""
    request = j.request
    assert isinstance(request, CompletionRequest)

    def attempt(client: UpstreamClient, model: str, progress: Progress) -> Awaitable[Ending]:
        return client.complete(model, request, lambda text: j.emit(Delta(text)), progress)

    return attempt


async def run_job(router: Router, j: Job, before_attempt: Callable[[], Any] | None = None
                  ) -> Completion:
    """router.run() on a chat job outside any pool; the reply is the text the job got."""
    ending = await router.run(j, attempt_of(j), before_attempt)
    return Completion("".join(j.partial), ending.finish_reason, ending.usage)


def hold(*sims: SimServer) -> None:
    """Every request these simulators get from now on hangs after its first token."""
    for sim in sims:
        sim.settings.fault = "hang_after_first"


async def stop(tasks: list[asyncio.Task[object]]) -> None:
    """Cancel running attempts (the model sees each abort)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def start(router: Router, jobs: list[Job]) -> list[asyncio.Task[object]]:
    """Run these jobs' attempts in the background."""
    return [asyncio.create_task(run_job(router, j)) for j in jobs]


async def occupy(routes: Routes, sim: SimServer, n: int) -> list[asyncio.Task[object]]:
    """`n` requests running on `sim` from another client (vLLM's other users)."""
    before = sim.stats.running
    hold(sim)
    outside = routes.router(routes.route([sim.url], name="outside"))
    tasks = start(outside, [job(f"other{i}") for i in range(n)])
    await wait_for(lambda: sim.stats.running >= before + n)
    sim.settings.fault = "none"
    return tasks
