"""Fixtures for the simulator's tests (make_sim lives in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest_asyncio


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """One keep-alive client session."""
    async with aiohttp.ClientSession() as s:
        yield s
