"""Admin flows end to end (real app, real SQLite): roles, registration modes, the admin API,
budgets, password resets and the audit log."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from server import keys
from server.runner import Running
from tests.support.admin import call, code, sign_in, sign_up
from tests.support.app import User

Start = Callable[..., Awaitable[Running]]




async def user_of(server: Running, name: str, password: str = "correct horse") -> User:
    """Sign in; the User."""
    status, body = await sign_in(server, name, password)
    assert status == 200, body
    return User(body, password)


ADMIN_ROUTES = [("GET", "/api/admin/users", None), ("POST", "/api/admin/users",
                                                      {"username": "zed"}),
                ("POST", "/api/admin/users/1/approve", None),
                ("POST", "/api/admin/users/1/disable", None),
                ("POST", "/api/admin/users/1/enable", None),
                ("PUT", "/api/admin/users/1/limits", {"limits": {}}),
                ("POST", "/api/admin/users/1/password", None),
                ("DELETE", "/api/admin/users/1", None), ("GET", "/api/admin/audit", None)]


async def test_first_user_is_admin_and_others_get_forbidden(server, register) -> None:
    admin, other = await register("first"), await register("second")
    status, body = await call(server, admin, "GET", "/api/auth/verify")
    assert body["user"]["role"] == "admin" and body["user"]["status"] == "active"
    status, body = await call(server, other, "GET", "/api/auth/verify")
    assert body["user"]["role"] == "user"
    for method, path, payload in ADMIN_ROUTES:
        status, body = await call(server, other, method, path, payload)
        assert (status, code(body)) == (403, "forbidden"), (method, path)
    status, body = await call(server, admin, "GET", "/api/auth/verify")
    assert status == 200  # the admin account is untouched by the refused calls
    status, body = await call(server, {}, "GET", "/api/admin/users")
    assert status == 401


async def test_listed_admins_and_startup_promotion(custom) -> None:
    running = await custom(auth={"admins": ["boss"]})
    assert (await sign_up(running, "early"))[1]["user"]["role"] == "user"  # not first-wins
    status, body = await sign_up(running, "BOSS")
    assert status == 201 and body["user"]["role"] == "admin"
    await running.stop()
    running = await custom(auth={"admins": ["boss", "early"]})
    early = await user_of(running, "early")
    status, body = await call(running, early, "GET", "/api/admin/users")
    assert status == 200 and [u["role"] for u in body["users"]] == ["admin", "admin"]
    status, body = await call(running, early, "GET", "/api/admin/audit")
    assert body["entries"][0]["action"] == "user.promote"
    assert body["entries"][0]["actor"] == "(config)"


async def test_closed_mode_admin_creates_accounts_that_must_change_password(custom) -> None:
    running = await custom(auth={"registration": "closed", "admins": ["root"]})
    status, body = await sign_up(running, "walkin")
    assert (status, code(body)) == (403, "registration_closed")
    assert (await sign_up(running, "root"))[0] == 201
    root = await user_of(running, "root")
    status, body = await call(running, root, "POST", "/api/admin/users", {"username": "newbie"})
    assert status == 201 and body["user"]["must_change_password"] is True
    temp = body["password"]
    status, body = await call(running, root, "POST", "/api/admin/users", {"username": "newbie"})
    assert status == 409
    newbie = await user_of(running, "newbie", temp)
    status, body = await call(running, newbie, "GET", "/api/conversations")
    assert (status, code(body)) == (403, "password_change_required")
    assert (await call(running, newbie, "GET", "/api/auth/verify"))[0] == 200
    status, body = await call(running, newbie, "POST", "/api/auth/password",
                              {"current_password": temp, "new_password": "a fresh secret"})
    assert status == 200
    assert (await call(running, newbie, "GET", "/api/conversations"))[0] == 401  # old token
    newbie = User(body, "a fresh secret")  # the change answers a new one
    assert (await call(running, newbie, "GET", "/api/conversations"))[0] == 200


async def test_register_open_false_still_closes(custom) -> None:
    running = await custom(auth={"register_open": False})
    status, body = await sign_up(running, "anyone")
    assert (status, code(body)) == (403, "registration_closed")


async def test_approval_mode_pending_until_approved(custom) -> None:
    running = await custom(auth={"registration": "approval"})
    status, body = await sign_up(running, "chief")  # first account: admin, active
    assert body["user"]["role"] == "admin" and body["user"]["status"] == "active"
    chief = User(body, "correct horse")
    status, body = await sign_up(running, "waiting")
    assert status == 201 and body["user"]["status"] == "pending"
    waiting = User(body, "correct horse")
    for method, path in [("GET", "/api/conversations"), ("POST", "/api/conversations"),
                         ("GET", "/api/keys"), ("GET", "/api/usage"), ("GET", "/api/search"),
                         ("GET", "/v1/models")]:
        status, body = await call(running, waiting, method, path)
        assert status == 403 and code(body) in ("account_pending",), (path, body)
    again = await user_of(running, "waiting")  # may sign in, only to see that it waits
    status, body = await call(running, again, "GET", "/api/auth/verify")
    assert status == 200 and body["user"]["status"] == "pending"
    status, body = await call(running, chief, "POST", f"/api/admin/users/{waiting.id}/approve")
    assert status == 200 and body["user"]["status"] == "active"
    # The same (cached) token now passes.
    assert (await call(running, waiting, "GET", "/api/conversations"))[0] == 200
    status, body = await call(running, chief, "POST", f"/api/admin/users/{waiting.id}/approve")
    assert (status, code(body)) == (409, "conflict")


async def test_list_users_paginates_with_usage_and_activity(server, register) -> None:
    admin = await register("lister")
    users = [await register() for _ in range(4)]
    assert (await call(server, users[0], "POST", "/api/chat", {"message": "hello"}))[0] == 200
    await server.app[keys.USAGE].flush()
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        path = "/api/admin/users?limit=2" + (f"&cursor={cursor}" if cursor else "")
        status, body = await call(server, admin, "GET", path)
        assert status == 200 and len(body["users"]) <= 2
        seen += body["users"]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert [u["id"] for u in seen] == [admin.id] + [u.id for u in users]
    busy = next(u for u in seen if u["id"] == users[0].id)
    assert busy["month_tokens"] > 0 and busy["month_requests"] == 1
    assert busy["last_active_at"] is not None
    idle = next(u for u in seen if u["id"] == users[1].id)
    assert idle["month_tokens"] == 0 and idle["last_active_at"] is None
    assert "password_hash" not in busy and "token_epoch" not in busy
    status, body = await call(server, admin, "GET", "/api/admin/users?cursor=abc")
    assert (status, code(body)) == (400, "invalid_request")


async def test_budget_override_is_enforced_for_that_user_only(server, register) -> None:
    admin, capped, free = await register(), await register(), await register()
    for bad in [{"monthly_tokens_per_user": -1}, {"monthly_tokens_per_user": True},
                {"monthly_tokens_per_user": "5"}, {"monthly_tokens_per_user": 1.5},
                {"no_such_cap": 3}]:
        status, body = await call(server, admin, "PUT", f"/api/admin/users/{capped.id}/limits",
                                  {"limits": bad})
        assert (status, code(body)) == (400, "invalid_request"), bad
    status, body = await call(server, admin, "PUT", "/api/admin/users/999/limits",
                              {"limits": {}})
    assert status == 404
    status, body = await call(server, admin, "PUT", f"/api/admin/users/{capped.id}/limits",
                              {"limits": {"monthly_tokens_per_user": 1,
                                          "max_running_per_user": 2}})
    assert status == 200
    assert body["user"]["limits"] == {"monthly_tokens_per_user": 1, "max_running_per_user": 2}
    status, body = await call(server, capped, "GET", "/api/auth/verify")
    assert body["user"]["limits"]["monthly_tokens_per_user"] == 1  # the cache was refreshed
    assert (await call(server, capped, "POST", "/api/chat", {"message": "one"}))[0] == 200
    status, body = await call(server, capped, "POST", "/api/chat", {"message": "two"})
    assert (status, code(body)) == (429, "quota_exceeded")
    for _ in range(2):
        assert (await call(server, free, "POST", "/api/chat", {"message": "more"}))[0] == 200
    status, body = await call(server, admin, "PUT", f"/api/admin/users/{capped.id}/limits",
                              {"limits": {}})  # back to the config's default: no budget
    assert status == 200 and body["user"]["limits"] == {}
    assert (await call(server, capped, "POST", "/api/chat", {"message": "three"}))[0] == 200


async def test_password_reset_forces_a_change_and_ends_sessions(server, register) -> None:
    admin, user = await register(), await register()
    assert (await call(server, user, "GET", "/api/conversations"))[0] == 200  # cached token
    status, body = await call(server, admin, "POST", f"/api/admin/users/{user.id}/password")
    assert status == 200 and body["user"]["must_change_password"] is True
    temp = body["password"]
    assert (await call(server, user, "GET", "/api/auth/verify"))[0] == 401
    assert (await sign_in(server, user.name, user.password))[0] == 401
    fresh = await user_of(server, user.name, temp)
    for method, path in [("GET", "/api/conversations"), ("POST", "/api/chat"),
                         ("DELETE", "/api/auth/account"), ("GET", "/api/keys")]:
        status, body = await call(server, fresh, method, path, {})
        assert (status, code(body)) == (403, "password_change_required"), path
    status, body = await call(server, fresh, "POST", "/api/auth/password",
                              {"current_password": "wrong one", "new_password": "x" * 12})
    assert status == 403
    status, body = await call(server, fresh, "POST", "/api/auth/password",
                              {"current_password": temp, "new_password": temp})
    assert status == 400
    status, body = await call(server, fresh, "POST", "/api/auth/password",
                              {"current_password": temp, "new_password": "brand new pass"})
    assert status == 200
    fresh = User(body, "brand new pass")  # the old token died with the change
    assert (await call(server, fresh, "GET", "/api/conversations"))[0] == 200
    assert (await sign_in(server, user.name, "brand new pass"))[0] == 200
    status, body = await call(server, admin, "POST", f"/api/admin/users/{admin.id}/password")
    assert (status, code(body)) == (409, "conflict")  # not on oneself: use the password change


async def test_every_admin_action_is_audited_without_secrets(server, register) -> None:
    admin, user = await register("auditor"), await register("subject")
    steps = [("POST", "/api/admin/users", {"username": "made", "password": "given password"}),
             ("PUT", f"/api/admin/users/{user.id}/limits",
              {"limits": {"max_stored_chars_per_user": 100}}),
             ("POST", f"/api/admin/users/{user.id}/password", None),
             ("POST", f"/api/admin/users/{user.id}/disable", None),
             ("POST", f"/api/admin/users/{user.id}/enable", None),
             ("DELETE", f"/api/admin/users/{user.id}", None)]
    secrets: list[str] = ["given password"]
    for method, path, body in steps:
        status, answer = await call(server, admin, method, path, body)
        assert status in (200, 201, 204), (path, answer)
        if answer and "password" in answer:
            secrets.append(answer["password"])
    status, body = await call(server, admin, "GET", "/api/admin/audit?limit=4")
    page = body["entries"]
    status, body = await call(server, admin, "GET",
                              f"/api/admin/audit?limit=4&cursor={body['next_cursor']}")
    entries = page + body["entries"]
    assert body["next_cursor"] is None
    assert [e["action"] for e in entries] == [
        "user.delete", "user.enable", "user.disable", "user.reset_password", "user.limits",
        "user.create"]
    assert all(e["actor"] == "auditor" and e["actor_id"] == admin.id for e in entries)
    assert entries[0]["target"] == "subject" and entries[0]["target_id"] == user.id
    assert entries[-1]["target"] == "made"
    assert entries[4]["detail"] == {"before": {}, "after": {"max_stored_chars_per_user": 100}}
    assert all(e["at"] for e in entries)
    dumped = str(entries)
    assert not any(secret in dumped for secret in secrets)


async def test_admin_cannot_act_on_self_or_missing_users(server, register) -> None:
    admin = await register()
    for action in ("disable", "password"):
        status, body = await call(server, admin, "POST", f"/api/admin/users/{admin.id}/{action}")
        assert (status, code(body)) == (409, "conflict")
    assert (await call(server, admin, "DELETE", f"/api/admin/users/{admin.id}"))[0] == 409
    for method, path in [("POST", "/api/admin/users/4242/disable"),
                         ("POST", "/api/admin/users/4242/enable"),
                         ("POST", "/api/admin/users/4242/approve"),
                         ("POST", "/api/admin/users/4242/password"),
                         ("DELETE", "/api/admin/users/4242")]:
        status, body = await call(server, admin, method, path)
        assert (status, code(body)) == (404, "not_found"), path
    status, body = await call(server, admin, "POST", "/api/admin/users",
                              {"username": "x y", "role": "root"})
    assert status == 400
    status, body = await call(server, admin, "POST", "/api/admin/users",
                              {"username": "helper", "role": "admin"})
    assert status == 201 and body["user"]["role"] == "admin"


async def test_a_password_an_admin_chooses_follows_the_password_rules(server, register) -> None:
    admin = await register()
    status, body = await call(server, admin, "POST", "/api/admin/users",
                              {"username": "newcomer", "password": "password123"})
    assert (status, code(body)) == (400, "weak_password")
    status, body = await call(server, admin, "POST", "/api/admin/users",
                              {"username": "newcomer", "password": "quiet-lantern-42"})
    assert status == 201 and "password" not in body


async def test_a_weak_new_password_names_the_new_password_field(server, register) -> None:
    user = await register()
    status, body = await call(server, user, "POST", "/api/auth/password",
                              {"current_password": user.password, "new_password": "password123"})
    assert (status, code(body), body["error"]["field"]) == (400, "weak_password", "new_password")


async def test_start_up_warns_about_unclaimed_admin_names_and_a_closed_door(
        custom, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="server.app")
    await custom(auth={"admins": ["ghost"]})
    assert "auth.admins names with no account yet" in caplog.text and "ghost" in caplog.text
    caplog.clear()
    await custom(auth={"registration": "closed"})
    assert "nobody can sign up" in caplog.text
