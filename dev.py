#!/usr/bin/env python3
"""The two commands: `python3 dev.py run` (server + simulator) and `python3 dev.py test`.

Creates .venv on first use: `run` installs what the server needs, `test` adds the test tools;
reinstalls when setup.cfg changes. Needs only Python 3.11+.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".chatgate-installed"


def ensure_env(with_tests: bool) -> None:
    """Create the virtualenv and install dependencies if missing or stale."""
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py runs on any python3 to say so
        sys.exit("chatgate needs Python 3.11 or newer")
    digest = hashlib.sha256((ROOT / "setup.cfg").read_bytes()).hexdigest()
    have = STAMP.read_text() if STAMP.exists() and PY.exists() else ""
    # A test install holds everything a run needs; a run install lacks the test tools.
    enough = {f"{digest} test"} if with_tests else {f"{digest} test", f"{digest} run"}
    if have in enough:
        return
    if not PY.exists():
        print("creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    target = f"{ROOT}[test]" if with_tests else str(ROOT)
    print(f"installing {'the server and its test tools' if with_tests else 'the server'} "
          "into .venv ...", flush=True)
    subprocess.run([str(PY), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "-e", target], check=True, cwd=ROOT)
    STAMP.write_text(f"{digest} {'test' if with_tests else 'run'}")


def lint() -> None:
    """The rules the code is held to (ruff.toml, setup.cfg [mypy]); stop at the first failure."""
    for step in (["-m", "ruff", "check", "."],
                 ["-m", "mypy", "--strict", "server", "workers", "vllm_sim"]):
        print("$", " ".join(step[1:]), flush=True)
        if subprocess.run([str(PY), *step], cwd=ROOT).returncode != 0:
            sys.exit(1)


def main() -> int:
    """Dispatch `run` or `test`; extra arguments go to run.py or pytest."""
    if len(sys.argv) < 2 or sys.argv[1] not in ("run", "test"):
        print("usage: python3 dev.py run [run.py options] | test [pytest options]")
        return 2
    command, rest = sys.argv[1], sys.argv[2:]
    ensure_env(with_tests=command == "test")
    if command == "run":
        real = "--no-demo" in rest or os.environ.get("CHATGATE_LLM__BASE_URL") \
            or os.environ.get("CHATGATE_MODELS")
        demo = [] if real else ["--demo"]
        rest = [a for a in rest if a != "--no-demo"]
        args = [str(PY), "run.py", *demo, *rest]
    else:
        if not rest:  # a partial run (`dev.py test -k chat`) skips the linters
            lint()
        args = [str(PY), "-m", "pytest", *rest]
    os.chdir(ROOT)
    os.execv(args[0], args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
