"""HTTP handlers for /api/auth/*."""

from __future__ import annotations

import re

from aiohttp import web

from .. import keys
from ..auth import principal_of, public
from ..errors import ApiError, rate_limited, unauthorized
from ..forwarded import client_ip
from ..responses import json_response
from ..sessions import end_session, start_session
from ..storage import users
from ..storage.rows import UserRow
from ..validation import boolean, read_json, text

_USERNAME = re.compile(r"[A-Za-z0-9_.\-]+")
_FIELDS = frozenset({"username", "password", "cookie_only"})


async def _credentials(request: web.Request) -> tuple[str, str, bool]:
    body = await read_json(request, _FIELDS)
    username = text(body, "username", min_len=3, max_len=64, pattern=_USERNAME,
                    hint="may contain only letters, digits, '_', '.' and '-'")
    password = text(body, "password", min_len=8, max_len=256)
    assert username is not None and password is not None
    return username, password, boolean(body, "cookie_only")


def _token_body(request: web.Request, user: UserRow, token: str,
                cookie_only: bool) -> dict[str, object]:
    """The answer to a sign-in; with cookie_only, the token stays in the HttpOnly cookie."""
    body: dict[str, object] = {"user": user, "token_type": "bearer",
                               "expires_in": request.app[keys.TOKENS].ttl_s}
    if not cookie_only:
        body["access_token"] = token
    return body


def _throttle(request: web.Request, key: object, what: str) -> None:
    """Per-client limit on password attempts: logins, registrations, account deletions."""
    retry = request.app[keys.LOGIN_LIMITER].hit(key)
    if retry is not None:
        raise rate_limited(retry, f"too many {what}, try again later")


def _ip(request: web.Request) -> str:
    return client_ip(request, request.app[keys.CONFIG].server.trust_forwarded)


@public
async def register(request: web.Request) -> web.Response:
    """Create an account and log it in."""
    if not request.app[keys.CONFIG].auth.register_open:
        raise ApiError(403, "registration_closed", "registration is closed on this server")
    _throttle(request, _ip(request), "sign-up attempts")
    username, password, cookie_only = await _credentials(request)
    hashed = await request.app[keys.PASSWORDS].hash(password)
    user = await users.create(request.app[keys.DB], username, hashed)
    token, _ = request.app[keys.TOKENS].issue(user)
    await start_session(request, token)
    return json_response(_token_body(request, user, token, cookie_only), status=201)


@public
async def login(request: web.Request) -> web.Response:
    """Exchange a username and password for a token and a session cookie."""
    _throttle(request, _ip(request), "login attempts")
    username, password, cookie_only = await _credentials(request)
    found = await users.credentials(request.app[keys.DB], username)
    ok = await request.app[keys.PASSWORDS].verify(found[1] if found else None, password)
    if not ok or found is None:
        raise unauthorized("wrong username or password")
    token, _ = request.app[keys.TOKENS].issue(found[0])
    await start_session(request, token)
    return json_response(_token_body(request, found[0], token, cookie_only))


async def logout(request: web.Request) -> web.Response:
    """Revoke the presented token (bearer or cookie) and clear the session."""
    await request.app[keys.TOKENS].revoke(principal_of(request))
    await end_session(request)
    return web.Response(status=204)


async def verify(request: web.Request) -> web.Response:
    """Who am I; answered from the token cache on a hit."""
    principal = principal_of(request)
    return json_response({"user": principal.user, "expires_at": principal.expires_at})


async def delete_account(request: web.Request) -> web.Response:
    """Delete the account and everything it owns, after checking the password again."""
    body = await read_json(request, frozenset({"password"}))
    password = text(body, "password", min_len=1, max_len=256)
    assert password is not None
    principal = principal_of(request)
    _throttle(request, ("account", principal.user["id"]), "attempts")
    db = request.app[keys.DB]
    found = await users.credentials(db, principal.user["username"])
    if not await request.app[keys.PASSWORDS].verify(found[1] if found else None, password):
        raise ApiError(403, "wrong_password", "the password is not correct")
    await users.delete(db, principal.user["id"])
    request.app[keys.TOKENS].forget_user(principal.user["id"])
    await end_session(request)
    return web.Response(status=204)
