"""Tokens (HS256 JWT) verified through a TTL cache, and the middleware that authenticates /api/*."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import jwt
from aiohttp import web
from cachetools import TTLCache

from . import keys
from .csrf import check_origin
from .errors import unauthorized
from .sessions import session_token
from .storage import Database, tokens, users
from .storage.rows import UserRow

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_ALGORITHM = "HS256"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated user and the token that proved it."""

    user: UserRow
    token: str
    jti: str
    expires_at: int


class AuthError(Exception):
    """A token that does not authenticate anyone."""


@dataclass
class TokenStats:
    """Cache counters (tests prove a hit never touches the database)."""

    hits: int = 0
    misses: int = 0


class TokenService:
    """Issues tokens, verifies them (cache first) and revokes them."""

    def __init__(self, db: Database, secret: str, ttl_s: int, cache_ttl_s: int,
                 cache_size: int) -> None:
        self._db = db
        self._key = secret
        self._ttl = ttl_s
        self._cache: TTLCache[str, Principal] = TTLCache(cache_size, cache_ttl_s)
        # Revoked here since start-up; guards against a verify that raced a logout.
        self._revoked: TTLCache[str, bool] = TTLCache(max(cache_size, 1024), ttl_s)
        self.stats = TokenStats()

    @property
    def ttl_s(self) -> int:
        """Lifetime of a new token."""
        return self._ttl

    def issue(self, user: UserRow) -> tuple[str, int]:
        """A new signed token for the user and its expiry (epoch seconds)."""
        now = int(time.time())
        exp = now + self._ttl
        jti = secrets.token_hex(16)
        claims = {"sub": str(user["id"]), "iat": now, "exp": exp, "jti": jti}
        token = jwt.encode(claims, self._key, algorithm=_ALGORITHM)
        self._cache[token] = Principal(user, token, jti, exp)  # the first verify is free
        return token, exp

    async def verify(self, token: str) -> Principal:
        """The token's principal; AuthError if invalid, expired, revoked or its user is gone."""
        principal = self._cache.get(token)
        if principal is not None:
            if principal.expires_at > time.time() and principal.jti not in self._revoked:
                self.stats.hits += 1
                return principal
            self._cache.pop(token, None)
        self.stats.misses += 1
        try:
            claims = jwt.decode(token, self._key, algorithms=[_ALGORITHM],
                                options={"require": ["sub", "iat", "exp", "jti"]})
            user_id = int(claims["sub"])
            jti = str(claims["jti"])
        except (jwt.PyJWTError, ValueError, TypeError) as err:
            raise AuthError("invalid or expired token") from err
        if jti in self._revoked:
            raise AuthError("token has been revoked")
        user = await users.principal(self._db, user_id, jti)
        if user is None:
            raise AuthError("token has been revoked or its user no longer exists")
        principal = Principal(user, token, jti, int(claims["exp"]))
        if jti not in self._revoked:  # a logout may have landed while we read
            self._cache[token] = principal
        return principal

    async def revoke(self, principal: Principal) -> None:
        """Make the token useless at once here, and everywhere once stored."""
        self._revoked[principal.jti] = True
        self._cache.pop(principal.token, None)
        await tokens.revoke(self._db, principal.jti, principal.expires_at)


    def forget_user(self, user_id: int) -> None:
        """Drop every cached token of a deleted user (their next request reads the database)."""
        for token, principal in list(self._cache.items()):
            if principal.user["id"] == user_id:
                self._revoked[principal.jti] = True
                self._cache.pop(token, None)


def public(handler: Handler) -> Handler:
    """Mark an /api/ handler as needing no authentication."""
    handler.chatgate_public = True  # type: ignore[attr-defined]
    return handler


def principal_of(request: web.Request) -> Principal:
    """The authenticated principal that the middleware attached."""
    return request[keys.PRINCIPAL]


async def _authenticate(request: web.Request) -> Principal:
    service = request.app[keys.TOKENS]
    header = request.headers.get("Authorization")
    via_cookie = False
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("Authorization header must be 'Bearer <token>'")
        token = token.strip()
    else:
        found = await session_token(request)
        if found is None:
            raise unauthorized()
        token, via_cookie = found, True
    try:
        principal = await service.verify(token)
    except AuthError as err:
        raise unauthorized(str(err)) from err
    if via_cookie and request.method not in _SAFE_METHODS:
        check_origin(request, request.app[keys.CONFIG].server)
    return principal


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Require a valid bearer token or session cookie on every non-public /api/ route."""
    route_handler = request.match_info.handler
    if request.path.startswith("/api/") and not getattr(route_handler, "chatgate_public", False) \
            and request.match_info.http_exception is None:
        request[keys.PRINCIPAL] = await _authenticate(request)
    return await handler(request)


def setup_auth(app: web.Application) -> None:
    """Install the authentication middleware."""
    app.middlewares.append(auth_middleware)
