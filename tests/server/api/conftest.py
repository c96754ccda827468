"""The API suite runs on both storage backends: each test once on SQLite, once on PostgreSQL
(ids `[sqlite]` / `[postgres]`). A test that is about SQLite itself (its files, its
migrations) is marked `@pytest.mark.sqlite_only("why")` and skipped on PostgreSQL, saying why."""

from __future__ import annotations

import pytest

BACKENDS = ("sqlite", "postgres")


@pytest.fixture(params=BACKENDS, autouse=True)
def backend(request: pytest.FixtureRequest) -> str:
    """The storage backend of this run of the test; on PostgreSQL, a fresh database of its own
    that every config and server process made in the test uses."""
    if request.param == "postgres":
        only = request.node.get_closest_marker("sqlite_only")
        if only is not None:
            pytest.skip(f"SQLite only: {only.args[0] if only.args else 'about SQLite itself'}")
        request.getfixturevalue("on_postgres")
    return str(request.param)
