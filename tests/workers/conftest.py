"""Fixtures for the workers' tests: a router builder over real sessions, a control session."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.support.routing import Routes


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
