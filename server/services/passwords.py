"""Argon2id password hashing, always off the event loop; passwords hashed NFKC-normalised."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from .password_policy import normalise

T = TypeVar("T")
# OWASP's Argon2id baseline: 19 MiB, 2 passes, 1 lane.
_HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
# Verified against when the user does not exist, so both failures take the same time.
_DUMMY = _HASHER.hash("chatgate-timing-equaliser")


class PasswordsBusy(Exception):
    """Too many hashes are already waiting: answer 503 rather than queue without bound."""


class Passwords:
    """Hashes and checks passwords on a small dedicated thread pool, with a bounded backlog."""

    def __init__(self, threads: int = 2, max_pending: int = 64) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="argon2")
        self._max_pending = max_pending
        self._pending = 0

    async def hash(self, password: str) -> str:
        """A new Argon2id hash of the NFKC form (the same text from any keyboard matches)."""
        return await self._run(_HASHER.hash, normalise(password))

    async def verify(self, stored: str | None, password: str) -> bool:
        """Whether the password matches; a missing user costs the same time. A hash made
        before passwords were normalised is of the text as typed: tried second."""
        return await self._run(_check, stored or _DUMMY, password, stored is not None)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pending >= self._max_pending:
            raise PasswordsBusy("too many sign-ins at once, try again shortly")
        self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self._pending -= 1

    def close(self) -> None:
        """Stop the threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _check(stored: str, password: str, real: bool) -> bool:
    forms = dict.fromkeys((normalise(password), password))  # one form for most passwords
    return any(_matches(stored, form) for form in forms) and real


def _matches(stored: str, password: str) -> bool:
    try:
        return _HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False
