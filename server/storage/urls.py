"""Database URLs shown to people: where, never who or with which password."""

from __future__ import annotations

from urllib.parse import urlsplit


def where(url: str) -> str:
    """host:port/database of a URL, without its user or password (for messages and logs)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        return f"{host}:{parts.port or 5432}{parts.path or '/'}"
    except ValueError:
        return "(unreadable database.url)"


def password_of(url: str) -> str | None:
    """The URL's password, to blank out of a driver's message that might quote it."""
    try:
        return urlsplit(url).password
    except ValueError:
        return None
