"""Accounts: sign-up, sign-in, sign-out and deletion; where login is decided."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

from ..storage import UserStore
from ..storage.rows import UserRow
from .apikeys import ApiKeyService
from .gate import admit
from .limits import Backoff, Check, Limits, Rate, key_of
from .password_policy import PasswordPolicy, WeakPassword
from .passwords import Passwords
from .tokens import Principal, TokenService


class RegistrationClosed(Exception):
    """Sign-ups are turned off on this server."""


class WrongCredentials(Exception):
    """The username or password is wrong (which one is never said)."""


class NotSignedIn(Exception):
    """The request was not signed by a session token, so there is nothing to sign out."""


class WrongPassword(Exception):
    """A signed-in user confirmed an action with the wrong password."""


class SamePassword(ValueError):
    """A password change that keeps the same password."""


@dataclass(frozen=True, slots=True)
class SignedIn:
    """A user and the fresh token that proves it."""

    user: UserRow
    token: str


class AccountService:
    """Password checks (hashed off the loop), throttled per client and per account, the
    password policy for new ones, and tokens for who passes.

    Sign-ups follow `registration`: "open", "approval" (new accounts wait, pending, until an
    admin approves them) or "closed" (only an admin creates accounts). A name in `admins`
    may always register and is an active admin at once; with no `admins` listed, the first
    account of an empty database is the admin.
    """

    def __init__(self, users: UserStore, passwords: Passwords, tokens: TokenService,
                 api_keys: ApiKeyService, limits: Limits, attempts_per_minute: int,
                 policy: PasswordPolicy, registration: str,
                 admins: tuple[str, ...] = ()) -> None:
        self._users = users
        self._passwords = passwords
        self._tokens = tokens
        self._api_keys = api_keys
        self._limits = limits
        self._attempts = attempts_per_minute  # password tries per client (or account)
        self._policy = policy
        self._registration = registration
        self._admins = frozenset(name.casefold() for name in admins)
        self._stop_jobs: Callable[[int], int] | None = None

    async def register(self, username: str, password: str, client: str) -> SignedIn:
        """Create an account and sign it in; Conflict when the name is taken."""
        listed = username.casefold() in self._admins
        if self._registration == "closed" and not listed:
            raise RegistrationClosed("registration is closed on this server: "
                                     "ask an administrator for an account")
        await self._limits.check(self._throttle(client, "sign-up attempts"))
        status = "pending" if self._registration == "approval" and not listed else "active"
        user = await self._users.create(
            username, await self.new_password_hash(username, password),
            role="admin" if listed else "user", status=status, first_is_admin=not self._admins)
        return SignedIn(user, self._tokens.issue(user))

    async def new_password_hash(self, username: str, password: str) -> str:
        """The hash of an acceptable new password; WeakPassword says why one is not."""
        self._policy.check(password, username)
        return await self._passwords.hash(password)

    async def login(self, username: str, password: str, client: str) -> SignedIn:
        """Check the password and issue a token; a missing user costs the same time. A
        pending account may sign in (only to see that it waits); a disabled one may not."""
        found = await self._checked(username, password, "failed logins for this account",
                                    self._throttle(client, "login attempts"))
        if found is None:
            raise WrongCredentials("wrong username or password")
        user, epoch = found
        admit(user, ungated=True)  # a disabled account may not sign in
        return SignedIn(user, self._tokens.issue(user, epoch))

    async def confirm_password(self, principal: Principal, password: str,
                               wrong: str = "the password is not correct") -> None:
        """A signed-in user's password, before a sensitive action (WrongPassword if not)."""
        user = principal.user
        throttle = self._throttle(("account", user["id"]), "attempts")
        if await self._checked(user["username"], password, "wrong passwords", throttle) is None:
            raise WrongPassword(wrong)

    async def _checked(self, username: str, password: str, what: str,
                       throttle: Check) -> tuple[UserRow, int] | None:
        """The user and token epoch if the password is theirs; tries per username back off
        once they fail, checked with `throttle` (the client's or account's tries) at once.
        Unknown names are counted too, so the limit does not tell which names exist."""
        key = username.lower()  # usernames are ASCII and unique case-insensitively
        await self._limits.check(throttle, Backoff(key, f"too many {what}, try again later"))
        found = await self._users.credentials(username)
        ok = await self._passwords.verify(found[1] if found else None, password)
        if not ok or found is None:
            return None
        self._limits.succeeded(key)
        return found[0], found[2]

    async def change_password(self, principal: Principal, current: str, new: str) -> SignedIn:
        """Set a new password once the current one is confirmed (ends a forced change). Every
        token and session of the user dies (a new epoch); the caller gets a fresh token."""
        user = principal.user
        await self.confirm_password(principal, current, "the current password is not correct")
        if new == current:
            raise SamePassword("the new password must differ from the current one")
        try:
            hashed = await self.new_password_hash(user["username"], new)
        except WeakPassword as err:
            raise WeakPassword(str(err), "new_password") from None
        await self._users.update(user["id"], password_hash=hashed, must_change_password=False,
                                 new_epoch=True)
        self._tokens.forget_user(user["id"])  # cached tokens die too, not only stored ones
        self._api_keys.forget_user(user["id"])  # keys stay; cached ones still say "must change"
        found = await self._users.credentials(user["username"])
        if found is None:  # deleted meanwhile
            raise WrongCredentials("the account no longer exists")
        return SignedIn(found[0], self._tokens.issue(found[0], found[2]))

    async def bootstrap(self) -> list[str]:
        """At start-up: make the accounts listed in `auth.admins` active admins (the config
        file wins). Nobody else is ever promoted here: an empty database's first account
        is made admin when it registers, and a database from before roles had its oldest
        account made admin once, by the migration. The names promoted."""
        return await self._users.promote(sorted(self._admins)) if self._admins else []

    async def unclaimed_admins(self) -> list[str]:
        """Names in `auth.admins` with no account yet: whoever registers one first is admin."""
        return [name for name in sorted(self._admins)
                if await self._users.credentials(name) is None]

    def stop_jobs_with(self, stop: Callable[[int], int]) -> None:
        """How to stop (and refuse) a deleted account's jobs: the worker pool's, once it runs."""
        self._stop_jobs = stop

    async def logout(self, principal: Principal) -> None:
        """Revoke the token that signed this request (an API key is deleted, not signed out)."""
        if principal.key is not None:
            raise NotSignedIn("an API key cannot sign out: delete it with DELETE /api/keys/{id}")
        await self._tokens.revoke(principal)

    async def delete(self, principal: Principal, password: str) -> None:
        """Delete the account and everything it owns, once the password is confirmed."""
        user = principal.user
        await self.confirm_password(principal, password)
        await self._users.delete(user["id"], keep_last_admin=True)
        self._tokens.forget_user(user["id"])
        self._api_keys.forget_user(user["id"])
        if self._stop_jobs is not None:  # a stream started before the deletion stops now
            self._stop_jobs(user["id"])

    def _throttle(self, key: Hashable, what: str) -> Rate:
        """Password attempts per client (or per account), as a check: logins, sign-ups,
        deletions."""
        return Rate("login", key_of(key), self._attempts, f"too many {what}, try again later")
