"""Fixtures for the workers' tests: echoing simulators, a router builder over real sessions,
a control session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.support.routing import Routes
from vllm_sim import SimServer

MakeSim = Callable[..., Awaitable[SimServer]]


@pytest.fixture
def make_sim(make_sim: MakeSim) -> MakeSim:
    """The top conftest's simulators, echoing the last user message by default here."""

    async def _make(**kw: Any) -> SimServer:
        kw.setdefault("echo", True)
        return await make_sim(**kw)

    return _make


@pytest.fixture
async def routes() -> AsyncIterator[Routes]:
    """Build replicas, routes and routers; their sessions are closed afterwards."""
    made = Routes()
    yield made
    await made.close()


@pytest.fixture
async def control() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain session for the simulator's /sim/* control endpoints."""
    async with aiohttp.ClientSession() as s:
        yield s
