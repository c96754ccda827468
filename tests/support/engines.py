"""The servers the tests start from Debian's packages: present, or the test is skipped (and
under CI=true, where every test must run, failed)."""

from __future__ import annotations

import os

import pytest

INSTALL_HINT = "apt-get install postgresql redis-server haproxy"


def require(program: str, path: str) -> None:
    """Skip (or, under CI=true, fail) when `program` is not installed at `path`."""
    if os.path.exists(path):
        return
    reason = f"{program} not found at {path}; install it with `{INSTALL_HINT}`"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must run these tests)", pytrace=False)
    pytest.skip(reason)
