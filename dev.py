#!/usr/bin/env python3
"""The two commands: `python3 dev.py run` (server + simulator) and `python3 dev.py test`.

Creates .venv on first use and installs the project with its test extra; reinstalls
when setup.cfg changes. Needs only Python 3.11+.
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


def ensure_env() -> None:
    """Create the virtualenv and install dependencies if missing or stale."""
    if sys.version_info < (3, 11):
        sys.exit("chatgate needs Python 3.11 or newer")
    wanted = hashlib.sha256((ROOT / "setup.cfg").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and PY.exists():
        return
    if not PY.exists():
        print("creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("installing dependencies into .venv ...", flush=True)
    subprocess.run([str(PY), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "-e", f"{ROOT}[test]"], check=True, cwd=ROOT)
    STAMP.write_text(wanted)


def main() -> int:
    """Dispatch `run` or `test`; extra arguments go to run.py or pytest."""
    if len(sys.argv) < 2 or sys.argv[1] not in ("run", "test"):
        print("usage: python3 dev.py run [run.py options] | test [pytest options]")
        return 2
    ensure_env()
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "run":
        demo = [] if ("--no-demo" in rest or os.environ.get("CHATGATE_LLM__BASE_URL")) else ["--demo"]
        rest = [a for a in rest if a != "--no-demo"]
        args = [str(PY), "run.py", *demo, *rest]
    else:
        args = [str(PY), "-m", "pytest", *rest]
    os.chdir(ROOT)
    os.execv(args[0], args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
