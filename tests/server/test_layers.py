"""The rooms' import rules (docs/architecture.md), checked on the code's own import statements."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# room -> modules it must never import (prefix match on the absolute module name).
RULES: dict[str, tuple[str, ...]] = {
    "workers": ("server", "vllm_sim"),
    "vllm_sim": ("server", "workers"),
    "server/storage": ("aiohttp", "server.api", "server.middleware", "server.services",
                       "server.keys", "server.app", "workers"),
    # Each backend stands alone: neither imports the other or the other's driver.
    "server/storage/sqlite": ("server.storage.postgres", "asyncpg"),
    "server/storage/postgres": ("server.storage.sqlite", "aiosqlite", "sqlite3"),
    "server/services": ("aiohttp", "server.api", "server.middleware", "server.keys",
                        "server.app", "server.storage.sqlite", "server.storage.postgres",
                        "aiosqlite", "sqlite3", "asyncpg", "redis", "server.coordination"),
    "server/coordination": ("aiohttp", "server.api", "server.middleware", "server.keys",
                            "server.app", "server.storage", "workers", "aiosqlite", "asyncpg"),
    "server/middleware": ("server.api", "server.storage.sqlite", "server.storage.postgres",
                          "server.app", "aiosqlite", "sqlite3", "asyncpg", "redis"),
    "server/api": ("server.storage", "workers", "server.app", "aiosqlite", "sqlite3",
                   "asyncpg", "redis"),
    "server/keys.py": ("server.api", "server.middleware", "server.app"),
    "server/runner.py": ("vllm_sim",),
    # The master only starts and watches processes: it never serves, so it loads no app.
    "server/master.py": ("vllm_sim", "aiohttp", "server.app", "server.api", "server.storage",
                         "server.runner"),
    "server/processes.py": ("vllm_sim", "aiohttp", "server.app", "server.api"),
}


def imported(path: Path) -> set[str]:
    """Every module a file imports, relative imports made absolute."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def files(room: str) -> list[Path]:
    """The Python files of a room (a folder, or one file)."""
    where = ROOT / room
    return [where] if where.suffix == ".py" else sorted(where.rglob("*.py"))


@pytest.mark.parametrize("room", sorted(RULES))
def test_room_imports_only_what_it_may(room: str) -> None:
    assert files(room), f"{room} has no Python files: the rule names a room that moved"
    broken = [f"{path.relative_to(ROOT)} imports {name}"
              for path in files(room) for name in sorted(imported(path))
              if any(name == banned or name.startswith(banned + ".")
                     for banned in RULES[room])]
    assert not broken, "\n".join(broken)


def test_the_checker_sees_relative_imports() -> None:
    """A rule that cannot fail is no rule: the checker must resolve `from ..x import y`."""
    names = imported(ROOT / "server" / "api" / "auth.py")
    assert "server.middleware.auth" in names and "server.keys" in names
