"""The API suite runs on both storage backends: each test once on SQLite, once on PostgreSQL
(ids `[sqlite]` / `[postgres]`)."""

from __future__ import annotations

import pytest

BACKENDS = ("sqlite", "postgres")


@pytest.fixture(params=BACKENDS, autouse=True)
def backend(request: pytest.FixtureRequest) -> str:
    """The storage backend of this run of the test; on PostgreSQL, a fresh database of its own
    that every config and server process made in the test uses."""
    if request.param == "postgres":
        request.getfixturevalue("on_postgres")
    return str(request.param)
