"""Which new passwords are accepted (NIST SP 800-63B): length, not common, not the username."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from pathlib import Path

MIN_LENGTH = 8
MAX_LENGTH = 1024  # long passphrases welcome; Argon2 takes any length
MIN_DISTINCT = 4  # "xxxxxxxx", "12121212": repetition adds length, not strength
COMMON_FILE = Path(__file__).resolve().parent.parent / "resources" / "common_passwords.txt"


class WeakPassword(Exception):
    """A new password that the policy refuses; the message says why, `field` where it was."""

    def __init__(self, message: str, field: str = "password") -> None:
        super().__init__(message)
        self.field = field


def normalise(password: str) -> str:
    """The form that is hashed: NFKC, so the same text typed on any keyboard matches."""
    return unicodedata.normalize("NFKC", password)


def load_common(path: Path = COMMON_FILE) -> frozenset[str]:
    """The shipped list of common passwords (blocking file read: call it off the loop)."""
    with path.open(encoding="utf-8") as handle:
        return frozenset(line.rstrip("\n") for line in handle
                         if line.strip() and not line.startswith("#"))


class PasswordPolicy:
    """Length in characters (any characters), not repetitive, not common, not the username."""

    def __init__(self, common: Iterable[str]) -> None:
        self._common = frozenset(common)

    def check(self, password: str, username: str) -> None:
        """Raise WeakPassword with the reason, or return for an acceptable new password."""
        text = normalise(password)
        if len(text) < MIN_LENGTH:
            raise WeakPassword(f"the password must have at least {MIN_LENGTH} characters")
        if len(text) > MAX_LENGTH:
            raise WeakPassword(f"the password must have at most {MAX_LENGTH} characters")
        folded = text.casefold()
        if len(set(folded)) < MIN_DISTINCT:
            raise WeakPassword(f"the password must use at least {MIN_DISTINCT} different "
                               "characters")
        name = normalise(username).casefold()
        if name and name in folded:
            raise WeakPassword("the password must not contain the username")
        if folded in self._common or folded.strip() in self._common:
            raise WeakPassword("this password is too common; choose a longer or rarer one "
                               "(a few unrelated words make a good one)")
