"""Who may do what with a valid credential: account status, forced password change, admin role."""

from __future__ import annotations

from ..storage.rows import UserRow


class AccountDisabled(Exception):
    """An administrator disabled this account."""


class AccountPending(Exception):
    """The account waits for an administrator's approval."""


class PasswordChangeRequired(Exception):
    """The password was reset by an administrator: change it before anything else."""


class Forbidden(Exception):
    """Only an administrator may do this."""


def admit(user: UserRow, ungated: bool = False) -> None:
    """Raise unless the user may use a route (`ungated`: verify, logout, password change)."""
    status = user.get("status", "active")
    if status == "disabled":
        raise AccountDisabled("this account has been disabled by an administrator")
    if ungated:
        return
    if status == "pending":
        raise AccountPending("this account is waiting for an administrator's approval")
    if user.get("must_change_password"):
        raise PasswordChangeRequired(
            "your password was reset: change it with POST /api/auth/password first")


def is_admin(user: UserRow) -> bool:
    """Whether the user is an active administrator who needs no password change."""
    return user.get("role") == "admin" and user.get("status", "active") == "active" \
        and not user.get("must_change_password")


def require_admin(user: UserRow) -> None:
    """Forbidden unless the user is an active administrator."""
    if not is_admin(user):
        raise Forbidden("only an administrator may do this")
