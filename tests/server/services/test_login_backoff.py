"""Failed password checks per account: a growing, capped delay, bounded memory, over HTTP too."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from server.middleware.sessions import COOKIE_NAME
from server.runner import Running
from server.services.ratelimit import FailureBackoff
from tests.support.app import error_of
from tests.support.auth import PASSWORD, bare_session, set_cookies

from .test_ratelimit import Clock

# --- the backoff itself (a clock moved by hand) ----------------------------------------------


def test_five_free_tries_then_the_wait_doubles_up_to_the_cap() -> None:
    clock = Clock()
    backoff = FailureBackoff(5, 60, clock=clock)
    assert [backoff.attempt("bob") for _ in range(5)] == [None] * 5
    waits = []
    for _ in range(9):
        wait = backoff.attempt("bob")
        assert wait is not None  # refused tries are not charged: the wait does not grow
        assert backoff.attempt("bob") == wait
        waits.append(wait)
        clock.now += wait
        assert backoff.attempt("bob") is None  # the next try, once it is due
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_success_clears_the_count_and_other_accounts_are_untouched() -> None:
    clock = Clock()
    backoff = FailureBackoff(3, 300, clock=clock)
    for _ in range(3):
        backoff.attempt("bob")
    assert backoff.attempt("bob") is not None
    assert backoff.attempt("alice") is None
    backoff.succeeded("bob")
    assert [backoff.attempt("bob") for _ in range(3)] == [None] * 3


def test_a_quiet_window_forgets_the_failures() -> None:
    clock = Clock()
    backoff = FailureBackoff(2, 300, window_s=900, clock=clock)
    for _ in range(2):
        backoff.attempt("bob")
    clock.now += 899
    assert backoff.attempt("bob") is None  # the wait (1 s) is over, but the count goes on
    assert backoff.attempt("bob") is not None
    clock.now += 900
    assert [backoff.attempt("bob") for _ in range(2)] == [None, None]


def test_memory_stays_bounded_and_a_locked_account_survives_a_spray_of_names() -> None:
    clock = Clock()
    backoff = FailureBackoff(5, 300, clock=clock, max_keys=1000)
    for _ in range(8):
        clock.now += 200
        backoff.attempt("victim")
    for i in range(100_000):  # an attacker trying a hundred thousand usernames once each
        backoff.attempt(f"name{i}")
        assert len(backoff) <= 1000
    assert backoff.attempt("victim") is not None  # still backing off


def test_the_delay_is_bounded_however_many_failures() -> None:
    clock = Clock()
    backoff = FailureBackoff(5, 300, clock=clock)
    for _ in range(1000):
        clock.now += 301
        assert backoff.attempt("bob") is None  # never locked out for longer than the cap
    assert backoff.delay(10**6) == 300


# --- over HTTP -------------------------------------------------------------------------------


async def _login(s: aiohttp.ClientSession, username: str, password: str) -> aiohttp.ClientResponse:
    async with s.post("/api/auth/login",
                      json={"username": username, "password": password}) as resp:
        await resp.read()
        return resp


async def test_a_botnet_cannot_spray_one_account(server: Running, register: Any) -> None:
    """The per-IP limit is set far out of reach here (as for guesses from many addresses):
    the per-account backoff alone stops the sixth guess."""
    await register("victim")
    async with bare_session(server) as s:
        statuses = [(await _login(s, "victim", f"wrong guess {i}")).status for i in range(5)]
        assert statuses == [401] * 5
        async with s.post("/api/auth/login",
                          json={"username": "Victim", "password": "wrong guess 6"}) as resp:
            err = await error_of(resp, 429, "rate_limited")
            assert resp.headers["Retry-After"] == "1"
            assert "account" in err["message"]
        # Even the right password waits (a guess that happened to be right would too).
        async with s.post("/api/auth/login",
                          json={"username": "victim", "password": PASSWORD}) as resp:
            await error_of(resp, 429, "rate_limited")
            assert COOKIE_NAME not in set_cookies(resp)
            retry = int(resp.headers["Retry-After"])
        await asyncio.sleep(retry)
        assert (await _login(s, "victim", PASSWORD)).status == 200
        # The success cleared the count: five more wrong tries are plain 401s.
        statuses = [(await _login(s, "victim", f"wrong again {i}")).status for i in range(5)]
        assert statuses == [401] * 5


async def test_unknown_names_back_off_alike(server: Running) -> None:
    """The limit does not tell which usernames exist."""
    async with bare_session(server) as s:
        statuses = [(await _login(s, "nobody-here", "wrong password")).status for _ in range(6)]
    assert statuses == [401] * 5 + [429]


async def test_parallel_guesses_gain_nothing(server: Running, register: Any) -> None:
    """Tries are charged when they start, so 20 at once still get only the free five."""
    await register("crowded")
    async with bare_session(server) as s:
        answers = await asyncio.gather(*(_login(s, "crowded", f"wrong guess {i}")
                                         for i in range(20)))
    statuses = sorted(r.status for r in answers)
    assert statuses == [401] * 5 + [429] * 15


async def test_account_deletion_passwords_share_the_backoff(server: Running,
                                                           register: Any) -> None:
    user = await register("deleter")
    async with bare_session(server) as s:
        for _ in range(5):
            async with s.delete("/api/auth/account", json={"password": "wrong guess"},
                                headers=user.headers) as resp:
                await error_of(resp, 403, "wrong_password")
        async with s.delete("/api/auth/account", json={"password": PASSWORD},
                            headers=user.headers) as resp:
            await error_of(resp, 429, "rate_limited")
        # ...and so do logins to that account: a stolen session cannot guess around it.
        assert (await _login(s, "deleter", PASSWORD)).status == 429
        async with s.get("/api/auth/verify", headers=user.headers) as resp:
            assert resp.status == 200  # nothing was deleted
