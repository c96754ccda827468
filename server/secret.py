"""The signing secret: from config, or generated once and kept beside the database."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

SECRET_FILE = "chatgate.secret"


def _load_or_create(db_path: str) -> str:
    folder = Path(db_path).resolve().parent if db_path != ":memory:" else Path.cwd()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # beside the database: owner only
    path = folder / SECRET_FILE
    if not path.exists():
        # Written whole under a temporary name, then linked in (atomic, never replacing): of
        # several processes starting at once, one secret wins and each reads it complete.
        tmp = folder / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secrets.token_urlsafe(48) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    value = path.read_text(encoding="ascii").strip()
    if len(value) < 32:
        raise ValueError(f"{path} holds too short a secret; delete it to make a new one")
    return value


async def resolve_secret(configured: str, db_path: str) -> str:
    """The configured secret, or the one in the file beside the database (made 0600 if new)."""
    if configured:
        return configured
    return await asyncio.to_thread(_load_or_create, db_path)
