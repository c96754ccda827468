"""Running on a real socket: the open-file limit follows the connection cap."""

from __future__ import annotations

import resource
import subprocess
import sys

from tests.support.paths import ROOT

_PROBE = ("import logging, resource\n"
          "logging.basicConfig()\n"
          "from server.runner import _check_file_limit\n"
          "_check_file_limit(4096)\n"
          "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n")


def _lower_soft_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))


def test_the_open_file_limit_is_raised_for_the_connection_cap() -> None:
    """A soft limit of 1,024 would make a cap of 4,096 connections meaningless: the server
    raises it as far as the hard limit allows, and warns when that is not enough."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    done = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True,
                          text=True, preexec_fn=_lower_soft_limit, timeout=60, check=True)
    soft = int(done.stdout.strip())
    need = 4096 + 256
    if hard == resource.RLIM_INFINITY or hard >= need:
        assert soft == need and "open-file limit" not in done.stderr
    else:
        assert soft == hard and "open-file limit" in done.stderr
