"""Access tokens: HS256 JWTs issued, verified through a TTL cache, and revoked."""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import jwt
from cachetools import TTLCache

from ..storage import TokenStore, UserStore
from ..storage.rows import UserRow

_ALGORITHM = "HS256"
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class KeyGrant:
    """What an API key allows: who it is (never the key itself) and its limits."""

    id: int
    name: str
    rpm: int | None
    tpm: int | None
    expires_at: int | None


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated user and the token (or API key) that proved it."""

    user: UserRow
    token: str
    jti: str
    expires_at: int
    key: KeyGrant | None = None


class AuthError(Exception):
    """A token that does not authenticate anyone."""


@dataclass
class TokenStats:
    """Cache counters (tests prove a hit never touches the database)."""

    hits: int = 0
    misses: int = 0


class TokenService:
    """Issues tokens, verifies them (cache first) and revokes them."""

    def __init__(self, users: UserStore, revoked: TokenStore, secret: str, ttl_s: int,
                 cache_ttl_s: int, cache_size: int) -> None:
        self._users = users
        self._store = revoked
        self._key = secret
        self._ttl = ttl_s
        self._cache: TTLCache[str, Principal] = TTLCache(cache_size, cache_ttl_s)
        # Revoked here since start-up; guards against a verify that raced a logout.
        self._revoked: TTLCache[str, bool] = TTLCache(max(cache_size, 1024), ttl_s)
        # Bumped when a user's cached tokens are dropped: a verify that read the user before
        # the change (an admin's disable, a new status or limits) must not cache what it read.
        self._generation: dict[int, int] = {}
        # Other caches of verified credentials (API keys) told by `forget`: (user, key id).
        self._also: list[Callable[[int, int | None], None]] = []
        # Told of each revocation made here (user, jti, key id), once stored: other processes
        # and nodes hear of it through them (Redis pub/sub).
        self.announce: list[Callable[[int, str | None, int | None], None]] = []
        self.stats = TokenStats()

    @property
    def ttl_s(self) -> int:
        """Lifetime of a new token."""
        return self._ttl

    def issue(self, user: UserRow, epoch: int = 0) -> str:
        """A new signed token for the user, valid while their token epoch stays `epoch`."""
        now = int(time.time())
        exp = now + self._ttl
        jti = secrets.token_hex(16)
        claims = {"sub": str(user["id"]), "iat": now, "exp": exp, "jti": jti, "ep": epoch}
        token = jwt.encode(claims, self._key, algorithm=_ALGORITHM)
        self._cache[token] = Principal(user, token, jti, exp)  # the first verify is free
        return token

    async def verify(self, token: str) -> Principal:
        """The token's principal; AuthError if invalid, expired, revoked or its user is gone."""
        principal = self._cache.get(token)  # only canonical spellings are ever cached
        if principal is not None:
            if principal.expires_at > time.time() and principal.jti not in self._revoked:
                self.stats.hits += 1
                return principal
            self._cache.pop(token, None)
        if not _canonical(token):  # else `T=` would be a second cache entry of token `T`
            raise AuthError("invalid or expired token")
        self.stats.misses += 1
        try:
            claims = jwt.decode(token, self._key, algorithms=[_ALGORITHM],
                                options={"require": ["sub", "iat", "exp", "jti"]})
            user_id = int(claims["sub"])
            jti = str(claims["jti"])
            epoch = int(claims.get("ep", 0))  # tokens from before epochs were epoch 0
        except (jwt.PyJWTError, ValueError, TypeError) as err:
            raise AuthError("invalid or expired token") from err
        if jti in self._revoked:
            raise AuthError("token has been revoked")
        generation = self._generation.get(user_id, 0)
        user = await self._users.principal(user_id, jti, epoch)
        if user is None:
            raise AuthError("token has been revoked or its user no longer exists")
        principal = Principal(user, token, jti, int(claims["exp"]))
        # A logout or an admin's change may have landed while we read: then do not cache.
        if jti not in self._revoked and self._generation.get(user_id, 0) == generation:
            self._cache[token] = principal
        return principal

    async def revoke(self, principal: Principal) -> None:
        """Make the token useless at once here, and everywhere once stored."""
        self._revoked[principal.jti] = True
        self._cache.pop(principal.token, None)
        await self._store.revoke(principal.jti, principal.expires_at, principal.user["id"])
        self.told(principal.user["id"], principal.jti)

    def also_forget(self, forget: Callable[[int, int | None], None]) -> None:
        """Have `forget` drop from another cache too: `forget(user_id, key_id)` is called for
        a key (key_id) or a user (None), never for a single token."""
        self._also.append(forget)

    def forget(self, user_id: int, jti: str | None = None, key_id: int | None = None) -> None:
        """Drop what another process or node changed (the database holds the truth, so the
        next request reads it): a revoked token (`jti`), a deleted API key (`key_id`), or,
        with neither, everything cached of the user."""
        if jti is not None:
            self._revoked[jti] = True  # revoked in the database: refused from the cache too
            for token, principal in list(self._cache.items()):
                if principal.jti == jti:
                    self._cache.pop(token, None)
            return
        if key_id is None:
            self._drop(user_id, revoke=False)
        for forget in self._also:
            forget(user_id, key_id)

    def told(self, user_id: int, jti: str | None = None, key_id: int | None = None) -> None:
        """Tell the `announce` listeners of a revocation stored here."""
        for listener in self.announce:
            listener(user_id, jti, key_id)

    def forget_user(self, user_id: int) -> None:
        """Kill every cached token of a deleted or disabled user (the database's new epoch
        or missing row refuses the rest)."""
        self._drop(user_id, revoke=True)
        self.told(user_id)

    def refresh_user(self, user_id: int) -> None:
        """Drop the user's cached tokens, still valid, so the next request reads the user anew
        (their status, password flag or limits changed)."""
        self._drop(user_id, revoke=False)
        self.told(user_id)

    def _drop(self, user_id: int, revoke: bool) -> None:
        self._generation[user_id] = self._generation.get(user_id, 0) + 1
        for token, principal in list(self._cache.items()):
            if principal.user["id"] == user_id:
                if revoke:
                    self._revoked[principal.jti] = True
                self._cache.pop(token, None)


def _canonical(token: str) -> bool:
    """Whether the token is spelled as we issue it: three unpadded base64url segments, the
    signature's unused last bits zero. The decoder accepts padding, stray characters and
    other last letters for the same signature; the cache is keyed by the exact text."""
    parts = token.split(".")
    if len(parts) != 3 or not all(_SEGMENT.fullmatch(part) for part in parts):
        return False
    signature = parts[2]
    try:
        raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    except (binascii.Error, ValueError):
        return False
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == signature
