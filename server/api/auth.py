"""HTTP handlers for /api/auth/*: parse, call the account service, shape the answer."""

from __future__ import annotations

import re

from aiohttp import web

from .. import keys
from ..middleware.auth import principal_of, public, ungated
from ..middleware.forwarded import client_ip
from ..middleware.sessions import end_session, start_session
from ..services.accounts import SignedIn
from ..services.password_policy import MAX_LENGTH, MIN_LENGTH
from .responses import json_response
from .validation import boolean, read_json, text

USERNAME = re.compile(r"[A-Za-z0-9_.\-]+")
_FIELDS = frozenset({"username", "password", "cookie_only"})


async def _credentials(request: web.Request) -> tuple[str, str, bool]:
    body = await read_json(request, _FIELDS)
    username = text(body, "username", min_len=3, max_len=64, pattern=USERNAME,
                    hint="may contain only letters, digits, '_', '.' and '-'")
    password = text(body, "password", min_len=MIN_LENGTH, max_len=MAX_LENGTH)
    assert username is not None and password is not None
    return username, password, boolean(body, "cookie_only")


async def _signed_in(request: web.Request, signed: SignedIn, cookie_only: bool,
                     status: int = 200) -> web.Response:
    """A new session cookie, and the token in the body unless `cookie_only` keeps it there."""
    await start_session(request, signed.token)
    body: dict[str, object] = {"user": signed.user, "token_type": "bearer",
                               "expires_in": request.app[keys.TOKENS].ttl_s}
    if not cookie_only:
        body["access_token"] = signed.token
    return json_response(body, status=status)


def _client(request: web.Request) -> str:
    return client_ip(request, request.app[keys.CONFIG].server.proxy_hops)


@public
async def register(request: web.Request) -> web.Response:
    """Create an account and log it in."""
    username, password, cookie_only = await _credentials(request)
    signed = await request.app[keys.ACCOUNTS].register(username, password, _client(request))
    return await _signed_in(request, signed, cookie_only, status=201)


@public
async def login(request: web.Request) -> web.Response:
    """Exchange a username and password for a token and a session cookie."""
    username, password, cookie_only = await _credentials(request)
    signed = await request.app[keys.ACCOUNTS].login(username, password, _client(request))
    return await _signed_in(request, signed, cookie_only)


@ungated
async def logout(request: web.Request) -> web.Response:
    """Revoke the presented token (bearer or cookie) and clear the session."""
    await request.app[keys.ACCOUNTS].logout(principal_of(request))
    await end_session(request)
    return web.Response(status=204)


@ungated
async def verify(request: web.Request) -> web.Response:
    """Who am I; answered from the token cache on a hit."""
    principal = principal_of(request)
    return json_response({"user": principal.user, "expires_at": principal.expires_at})


async def delete_account(request: web.Request) -> web.Response:
    """Delete the account and everything it owns, after checking the password again."""
    body = await read_json(request, frozenset({"password"}))
    password = text(body, "password", min_len=1, max_len=MAX_LENGTH)
    assert password is not None
    principal = principal_of(request)
    await request.app[keys.ACCOUNTS].delete(principal, password)
    request.app[keys.PROFILES].forget(principal.user["id"])  # cached settings and memories
    await end_session(request)
    return web.Response(status=204)


@ungated
async def change_password(request: web.Request) -> web.Response:
    """Change the password (required after an administrator reset it)."""
    body = await read_json(request, frozenset({"current_password", "new_password"}))
    current = text(body, "current_password", min_len=1, max_len=1024)
    new = text(body, "new_password", min_len=8, max_len=1024)
    assert current is not None and new is not None
    signed = await request.app[keys.ACCOUNTS].change_password(principal_of(request), current, new)
    # Every other session and token is dead now; the caller carries on with a new one: a new
    # cookie for a browser (its token never shown), the token in the body for anyone else.
    return await _signed_in(request, signed, cookie_only=bool(request.get(keys.VIA_COOKIE)))
