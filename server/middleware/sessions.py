"""Browser sessions: an encrypted, HttpOnly, SameSite=Lax cookie that carries the access token."""

from __future__ import annotations

import hashlib

from aiohttp import web
from aiohttp_session import Session, get_session, new_session, session_middleware
from aiohttp_session.cookie_storage import EncryptedCookieStorage

from ..logthrottle import quieten_library_logs
from .forwarded import is_https

COOKIE_NAME = "chatgate_session"
_TOKEN = "t"


class _CookieStorage(EncryptedCookieStorage):
    """Sets `Secure` per request: only when the client came over HTTPS."""

    def __init__(self, key: bytes, max_age: int, proxy_hops: int) -> None:
        super().__init__(key, cookie_name=COOKIE_NAME, httponly=True, samesite="Lax",
                         max_age=max_age, path="/")
        self._hops = proxy_hops

    async def save_session(self, request: web.Request, response: web.StreamResponse,
                           session: Session) -> None:
        # save_cookie reads the params synchronously, so this per-request change is safe.
        self._cookie_params["secure"] = True if is_https(request, self._hops) else None
        await super().save_session(request, response, session)


def setup_sessions(app: web.Application, secret: str, max_age: int, proxy_hops: int) -> None:
    """Install the session middleware with a key derived from the auth secret."""
    key = hashlib.sha256(b"chatgate-session:" + secret.encode()).digest()
    quieten_library_logs()  # a forged cookie per request must not mean a log line per request
    app.middlewares.append(session_middleware(_CookieStorage(key, max_age, proxy_hops)))


async def session_token(request: web.Request) -> str | None:
    """The access token held by the request's session cookie, if any."""
    if COOKIE_NAME not in request.cookies:
        return None
    token = (await get_session(request)).get(_TOKEN)
    return token if isinstance(token, str) else None


async def start_session(request: web.Request, token: str) -> None:
    """Put a fresh token in a new session (a new cookie, against fixation)."""
    session = await new_session(request)
    session[_TOKEN] = token


async def end_session(request: web.Request) -> None:
    """Clear the session cookie."""
    if COOKIE_NAME in request.cookies:
        (await get_session(request)).invalidate()
