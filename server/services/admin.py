"""What an administrator may do to accounts; every action is written to the audit log."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from workers.errors import JobCancelled, WorkerError

from ..storage import AuditStore, KeyStore, NotFound, UserStore
from ..storage.rows import AdminUserRow, AuditRow, UserRow
from .apikeys import ApiKeyService
from .gate import Forbidden, require_admin
from .password_policy import PasswordPolicy
from .passwords import Passwords
from .tokens import Principal, TokenService
from .usage import UsageMeter, today

# The per-user overrides an admin may set: exactly the config names of the caps (limits
# section, but max_running_per_user: queue section). Enforced where each cap is enforced.
LIMIT_KEYS = frozenset({"monthly_tokens_per_user", "max_running_per_user",
                        "conversations_per_user_per_minute", "max_conversations_per_user",
                        "max_stored_chars_per_user", "max_api_keys_per_user"})
_LIMIT_MAX = 2**53  # JSON-safe; far beyond any real cap


class InvalidAdminRequest(ValueError):
    """An admin request that cannot be done as asked (`field` names what is wrong)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class AdminConflict(Exception):
    """The account is not in a state the action applies to (or is the admin's own)."""


@dataclass(frozen=True, slots=True)
class Created:
    """A user made by an admin, and the temporary password if one was generated (shown once)."""

    user: UserRow
    password: str | None


def temporary_password() -> str:
    """A random password to hand over once; the user must change it at next login."""
    return secrets.token_urlsafe(12)


class AdminService:
    """Account administration: each method checks the actor is an admin, then audits."""

    def __init__(self, users: UserStore, keys: KeyStore, audit: AuditStore,
                 passwords: Passwords, policy: PasswordPolicy, tokens: TokenService,
                 api_keys: ApiKeyService,
                 meter: UsageMeter, cancel_jobs: Callable[[int, WorkerError, bool], int],
                 unblock_jobs: Callable[[int], None]) -> None:
        self._users = users
        self._keys = keys
        self._audit = audit
        self._passwords = passwords
        self._policy = policy
        self._tokens = tokens
        self._api_keys = api_keys
        self._meter = meter
        self._cancel_jobs = cancel_jobs  # (user id, error, block the user's new jobs too)
        self._unblock_jobs = unblock_jobs

    async def list_users(self, actor: Principal, limit: int,
                         cursor: str | None) -> tuple[list[AdminUserRow], str | None]:
        """A page of users by id, with this month's usage and last activity."""
        _require_admin(actor)
        return await self._users.page(limit, cursor, today()[:7] + "-01")

    async def create_user(self, actor: Principal, username: str, password: str | None,
                          role: str) -> Created:
        """Create an active account; it must change its password at first login."""
        _require_admin(actor)
        generated = temporary_password() if password is None else None
        if password is not None:
            self._policy.check(password, username)  # an admin's choice follows the same rules
        user = await self._users.create(username, await self._passwords.hash(
            password or generated or ""), role=role, must_change_password=True)
        await self._record(actor, "user.create", user, {"role": role,
                                                        "generated_password": bool(generated)})
        return Created(user, generated)

    async def approve(self, actor: Principal, user_id: int) -> UserRow:
        """Let a pending account in."""
        _require_admin(actor)
        if (await self._get(user_id)).get("status") != "pending":
            raise AdminConflict("only a pending account can be approved")
        user = await self._users.update(user_id, status="active")
        self._unblock_jobs(user_id)
        self._refresh(user_id)
        await self._record(actor, "user.approve", user, {})
        return user

    async def disable(self, actor: Principal, user_id: int) -> UserRow:
        """Disable an account: its tokens, sessions and API keys die and its jobs stop, now."""
        self._not_self(actor, user_id, "disable")
        await self._get(user_id)
        user = await self._users.update(user_id, status="disabled", new_epoch=True)
        deleted = await self._keys.delete_all(user_id)
        self._tokens.forget_user(user_id)
        self._api_keys.forget_user(user_id, deleted)
        stopped = self._cancel_jobs(user_id, JobCancelled(
            "the account was disabled by an administrator"), True)
        await self._record(actor, "user.disable", user, {"api_keys_deleted": len(deleted),
                                                         "jobs_stopped": stopped})
        return user

    async def enable(self, actor: Principal, user_id: int) -> UserRow:
        """Enable a disabled account again (it signs in anew; its old tokens stay dead)."""
        _require_admin(actor)
        if (await self._get(user_id)).get("status") != "disabled":
            raise AdminConflict("only a disabled account can be enabled")
        user = await self._users.update(user_id, status="active")
        self._unblock_jobs(user_id)
        self._refresh(user_id)
        await self._record(actor, "user.enable", user, {})
        return user

    async def delete(self, actor: Principal, user_id: int) -> None:
        """Delete an account and everything it owns; its jobs stop and its credentials die."""
        self._not_self(actor, user_id, "delete")
        user = await self._get(user_id)
        stopped = self._cancel_jobs(user_id, JobCancelled(
            "the account was deleted by an administrator"), True)  # ids are never reused
        if not await self._users.delete(user_id):
            raise NotFound("user not found")
        self._tokens.forget_user(user_id)
        self._api_keys.forget_user(user_id)
        self._meter.forget_user(user_id)
        await self._record(actor, "user.delete", user, {"jobs_stopped": stopped})

    async def set_limits(self, actor: Principal, user_id: int,
                         limits: Mapping[str, Any]) -> UserRow:
        """Replace the user's cap overrides ({} = the config's defaults)."""
        _require_admin(actor)
        checked = check_limits(limits)
        before = (await self._get(user_id)).get("limits", {})
        user = await self._users.update(user_id, limits=checked)
        self._refresh(user_id)  # the new limits reach the user's next request
        await self._record(actor, "user.limits", user, {"before": before, "after": checked})
        return user

    async def reset_password(self, actor: Principal, user_id: int) -> tuple[UserRow, str]:
        """A temporary password (returned once): the user's sessions end, and they must
        change it at next login."""
        self._not_self(actor, user_id, "reset the password of")
        await self._get(user_id)
        password = temporary_password()
        user = await self._users.update(user_id, password_hash=await self._passwords.hash(
            password), must_change_password=True, new_epoch=True)
        self._tokens.forget_user(user_id)
        self._api_keys.forget_user(user_id)  # keys stay, but answer 403 until the change
        await self._record(actor, "user.reset_password", user, {})
        return user, password

    async def audit(self, actor: Principal, limit: int,
                    cursor: str | None) -> tuple[list[AuditRow], str | None]:
        """A page of the audit log, newest first."""
        _require_admin(actor)
        return await self._audit.page(limit, cursor)

    async def _get(self, user_id: int) -> UserRow:
        user = await self._users.get(user_id)
        if user is None:
            raise NotFound("user not found")
        return user

    def _not_self(self, actor: Principal, user_id: int, what: str) -> None:
        _require_admin(actor)
        if actor.user["id"] == user_id:
            raise AdminConflict(f"an administrator cannot {what} their own account here")

    def _refresh(self, user_id: int) -> None:
        """The user's cached credentials carry the old status or limits: read anew."""
        self._tokens.refresh_user(user_id)
        self._api_keys.forget_user(user_id)

    async def _record(self, actor: Principal, action: str, target: UserRow,
                      detail: dict[str, Any]) -> None:
        await self._audit.add(actor.user["id"], actor.user["username"], action, target["id"],
                              target["username"], detail)


def check_limits(limits: Mapping[str, Any]) -> dict[str, int]:
    """Known keys only, each a whole number from 0 (0 = that cap is off for this user)."""
    checked: dict[str, int] = {}
    for name, value in limits.items():
        if name not in LIMIT_KEYS:
            raise InvalidAdminRequest(
                f"unknown limit {name!r} (known: {', '.join(sorted(LIMIT_KEYS))})", "limits")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _LIMIT_MAX:
            raise InvalidAdminRequest(f"{name} must be a whole number from 0", "limits")
        checked[name] = value
    return checked


def _require_admin(actor: Principal) -> None:
    """An active administrator, signed in: an API key (a script's credential) never
    administers, so a leaked key cannot take over accounts."""
    require_admin(actor.user)
    if actor.key is not None:
        raise Forbidden("administration needs a signed-in session, not an API key")
