"""New passwords: not common, not the username, not repetitive; long passphrases and any
characters welcome (hashed NFKC-normalised); old hashes still log in."""

from __future__ import annotations

import json
from typing import Any

import pytest
from argon2 import PasswordHasher

from server.runner import Running
from server.services.password_policy import (
    COMMON_FILE,
    MAX_LENGTH,
    PasswordPolicy,
    WeakPassword,
    load_common,
)
from tests.support.app import error_of, storage_of
from tests.support.auth import bare_session

# --- the policy ------------------------------------------------------------------------------


def test_the_shipped_list_loads_and_holds_the_usual_suspects() -> None:
    common = load_common()
    assert 10_000 <= len(common) <= 20_000
    assert {"12345678", "password", "password1", "iloveyou", "qwertyuiop"} <= common
    assert "zxcvbn" in COMMON_FILE.read_text(encoding="utf-8")[:600]  # its source is named


@pytest.mark.parametrize("password,username,reason", [
    ("12345678", "alice", "common"),
    ("PassWord1", "alice", "common"),  # case does not help
    ("ｐａｓｓｗｏｒｄ", "alice", "common"),  # nor full-width letters (NFKC)
    ("alice-2026", "alice", "username"),
    ("xxALICExx99", "alice", "username"),
    ("bob.smith", "Bob.Smith", "username"),
    ("aaaaaaaaaaaa", "alice", "different"),
    ("abababababab", "alice", "different"),
    ("short", "alice", "at least 8"),
])
def test_weak_passwords_are_refused_with_the_reason(password: str, username: str,
                                                    reason: str) -> None:
    policy = PasswordPolicy(load_common())
    with pytest.raises(WeakPassword, match=reason):
        policy.check(password, username)


@pytest.mark.parametrize("password", [
    "correct horse", "tr0ub4dor&3x", "Ünïcödé päss wörd", "日本語のパスワードです",
    "🦆🦆🦆 quack 🦆",
    "a long passphrase of many words " * 32,  # 1024 characters
])
def test_good_passwords_pass(password: str) -> None:
    PasswordPolicy(load_common()).check(password[:MAX_LENGTH], "alice")


# --- over HTTP -------------------------------------------------------------------------------


@pytest.mark.parametrize("password,reason", [
    ("12345678", "common"), ("Password1", "common"), ("weakling-is-me", "username"),
    ("zzzzzzzzzz", "different"),
])
async def test_register_refuses_weak_passwords_with_400_weak_password(
        server: Running, password: str, reason: str) -> None:
    async with bare_session(server) as s:
        async with s.post("/api/auth/register",
                          json={"username": "weakling", "password": password}) as resp:
            err = await error_of(resp, 400, "weak_password")
            assert err["field"] == "password" and reason in err["message"]
            assert password not in json.dumps(err)
        async with s.post("/api/auth/login",
                          json={"username": "weakling", "password": password}) as resp:
            await error_of(resp, 401)  # nobody was created


async def test_a_long_unicode_passphrase_works_in_any_normal_form(server: Running) -> None:
    composed = "Ça, c'est une phrase de passe très longue 🔑 " * 20  # 900+ characters
    decomposed = composed.replace("Ç", "C\u0327").replace("è", "e\u0300")
    assert len(composed) <= MAX_LENGTH and decomposed != composed
    async with bare_session(server) as s:
        async with s.post("/api/auth/register",
                          json={"username": "poet", "password": composed}) as resp:
            assert resp.status == 201, await resp.text()
        for typed in (composed, decomposed):  # another keyboard or OS sends other code points
            async with s.post("/api/auth/login",
                              json={"username": "poet", "password": typed}) as resp:
                assert resp.status == 200, await resp.text()


async def test_a_hash_made_before_normalisation_still_logs_in(server: Running) -> None:
    """Earlier versions hashed the password as typed; those users must still get in."""
    typed = "ﬁne ﬂour ﬁelds"  # ligatures: NFKC would make them "fine flour fields"
    stored = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1).hash(typed)
    await storage_of(server).users.create("oldtimer", stored)
    async with bare_session(server) as s:
        async with s.post("/api/auth/login",
                          json={"username": "oldtimer", "password": typed}) as resp:
            assert resp.status == 200, await resp.text()
        async with s.post("/api/auth/login",
                          json={"username": "oldtimer", "password": "fine flour fields"}) as resp:
            await error_of(resp, 401)


async def test_the_length_bounds_are_8_and_1024(server: Running, register: Any) -> None:
    async with bare_session(server) as s:
        async with s.post("/api/auth/register",
                          json={"username": "toolong", "password": "ab1" * 342}) as resp:
            err = await error_of(resp, 400, "invalid_request")
            assert err["field"] == "password"
    await register("longest", "ab1 " * 256)
