"""API keys for programs: made once, shown once, kept as a keyed hash, checked through a cache."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

from cachetools import TTLCache

from ..storage import KeyStore
from ..storage.rows import KeyRow, UserRow, now_iso
from .caps import Caps, Overrides
from .tokens import AuthError, KeyGrant, Principal

KEY_MARK = "cg-"  # every key starts so: the auth middleware tells keys from tokens by it
_PREFIX_LEN = 12  # hex characters after the mark, stored and indexed to find the key


def is_api_key(token: str) -> bool:
    """Whether a bearer credential is an API key (not a session token)."""
    return token.startswith(KEY_MARK)


class ApiKeyService:
    """Creates, lists, deletes and verifies API keys; a deleted key is dead at once."""

    def __init__(self, store: KeyStore, secret: str, cache_ttl_s: int, cache_size: int,
                 caps: Caps) -> None:
        self._store = store
        self._caps = caps
        # A fast keyed hash is right for random 256-bit keys (Argon2 is for passwords).
        self._hmac_key = hashlib.sha256(b"chatgate-api-keys:" + secret.encode()).digest()
        self._cache: TTLCache[str, Principal] = TTLCache(cache_size, cache_ttl_s)
        self._deleted: TTLCache[int, bool] = TTLCache(max(cache_size, 1024), cache_ttl_s * 2)
        self._used: dict[int, str] = {}  # key id -> when last used, written in batches
        self._generation = 0  # bumped when a user's cache is dropped (rare: admin actions)
        # Told of each key deleted here (user, None, key id), as TokenService.announce.
        self.announce: list[Callable[[int, str | None, int | None], None]] = []

    async def create(self, user_id: int, name: str, expires_at: int | None, rpm: int | None,
                     tpm: int | None, limits: Overrides = None) -> tuple[KeyRow, str]:
        """A new key for the user: its row, and the key itself (never stored, shown once);
        TooManyKeys past the user's `max_api_keys_per_user` (`limits`: their overrides)."""
        prefix = secrets.token_hex(_PREFIX_LEN // 2)
        key = f"{KEY_MARK}{prefix}{secrets.token_urlsafe(32)}"
        row = await self._store.create(user_id, name, prefix, self._hash(key), expires_at, rpm,
                                       tpm, self._caps.api_keys(limits))
        return row, key

    async def list(self, user_id: int) -> list[KeyRow]:
        """The user's keys, newest first, without secrets."""
        rows = await self._store.list(user_id)
        for row in rows:  # last use not yet written shows too
            row["last_used_at"] = self._used.get(row["id"], row["last_used_at"])
        return rows

    async def delete(self, user_id: int, key_id: int) -> None:
        """Delete one of the user's keys; no request authenticates with it from now on."""
        await self._store.delete(user_id, key_id)
        self._forget(lambda p: p.key is not None and p.key.id == key_id)
        self._deleted[key_id] = True
        for listener in self.announce:
            listener(user_id, None, key_id)

    def forget_user(self, user_id: int, key_ids: tuple[int, ...] = ()) -> None:
        """Drop every cached key of a user (deleted, disabled or changed), and mark these
        deleted keys dead at once; the next request reads the user anew."""
        self._generation += 1
        self._forget(lambda p: p.user["id"] == user_id)
        for key_id in key_ids:
            self._deleted[key_id] = True

    def forget(self, user_id: int, key_id: int | None) -> None:
        """Another process or node deleted this key (`key_id`) or changed its user (None)."""
        if key_id is None:
            self.forget_user(user_id)
            return
        self._forget(lambda p: p.key is not None and p.key.id == key_id)
        self._deleted[key_id] = True

    async def verify(self, key: str) -> Principal:
        """The key's principal; AuthError if unknown, wrong, expired or deleted."""
        principal = self._cache.get(key)
        if principal is None:
            principal = await self._lookup(key)
        grant = principal.key
        assert grant is not None
        if grant.expires_at is not None and grant.expires_at <= time.time():
            self._cache.pop(key, None)
            raise AuthError("the API key has expired")
        self._used[grant.id] = now_iso()
        return principal

    def used(self) -> dict[int, str]:
        """When each key was last used, not yet written (a copy, for one batched write)."""
        return dict(self._used)

    def written(self, used: dict[int, str]) -> None:
        """Forget what a finished write holds (a key used again meanwhile stays)."""
        for key_id, when in used.items():
            if self._used.get(key_id) == when:
                del self._used[key_id]

    async def _lookup(self, key: str) -> Principal:
        prefix = key[len(KEY_MARK):len(KEY_MARK) + _PREFIX_LEN]
        generation = self._generation
        found = await self._store.by_prefix(prefix) if len(prefix) == _PREFIX_LEN else None
        if found is None or not hmac.compare_digest(found[1], self._hash(key)):
            raise AuthError("invalid API key")
        row, _, user = found
        if row["id"] in self._deleted:  # deleted while we read (a deleted key is never cached)
            raise AuthError("invalid API key")
        principal = _principal(user, key, row)
        if self._generation == generation:  # else an admin's change landed while we read
            self._cache[key] = principal
        return principal

    def _hash(self, key: str) -> str:
        return hmac.new(self._hmac_key, key.encode(), hashlib.sha256).hexdigest()

    def _forget(self, match: Callable[[Principal], bool]) -> None:
        for cached, principal in list(self._cache.items()):
            if match(principal):
                self._cache.pop(cached, None)


def _principal(user: UserRow, key: str, row: KeyRow) -> Principal:
    grant = KeyGrant(row["id"], row["name"], row["rpm"], row["tpm"], row["expires_at"])
    return Principal(user, key, f"key-{row['id']}", row["expires_at"] or 0, grant)
