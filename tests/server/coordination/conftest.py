"""Two app instances (two nodes) sharing one database and one real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from server.runner import Running, start
from tests.support.app import make_config
from tests.support.pair import Pair
from tests.support.redis import RedisServer
from vllm_sim import SimServer


@pytest.fixture
async def pair(tmp_path: Path, simulator: SimServer,
               redis_server: RedisServer) -> AsyncIterator[Pair]:
    """Start two app instances sharing one SQLite file and one Redis (config sections may be
    changed); both stopped after the test."""
    running: list[Running] = []

    async def make(**sections: Any) -> tuple[Running, Running]:
        sections.setdefault("coordination", {})
        # A killed Redis refuses at once; a long timeout keeps a busy CI machine's slow answer
        # from counting as an outage (which would make the limits per-process mid-test).
        sections["coordination"] = {"redis_url": redis_server.url, "timeout_s": 2.0,
                                    "health_interval_s": 0.1, **sections["coordination"]}
        config = make_config(tmp_path, simulator.url, **sections)
        for node in ("a", "b"):
            running.append(await start(config.replace("coordination", node_id=node)))
        return running[-2], running[-1]

    yield make
    for server in reversed(running):
        await server.stop()
