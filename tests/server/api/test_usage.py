"""GET /api/usage: bad or extreme day ranges are a clear 400, never a 500."""

from __future__ import annotations

import aiohttp
import pytest

from server.runner import Running
from tests.support.app import error_of, register_over_http


@pytest.mark.parametrize("query", ["from=2000-01-01&to=0001-01-01", "to=0001-01-01",
                                   "from=2026-02-01&to=2026-01-01", "from=9999-99-99",
                                   "from=2020-01-01&to=2026-01-01"])
async def test_usage_days_out_of_range_are_400_not_500(server: Running, query: str) -> None:
    """`to` near the first day there is: the default start (30 days before) is no date."""
    user = await register_over_http(server.url, f"early{abs(hash(query)) % 10**6}")
    async with aiohttp.ClientSession(server.url) as s:
        async with s.get(f"/api/usage?{query}", headers=user.headers) as resp:
            if query == "to=0001-01-01":
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["from"] == "0001-01-01"
            else:
                await error_of(resp, 400, "invalid_request")
