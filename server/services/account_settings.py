"""Account settings (the default system prompt, the theme): kept on the user, read through
the profile cache. Sign-up, sign-in and deletion are accounts.py."""

from __future__ import annotations

from typing import Any

from ..storage import AccountSettingsStore
from .caps import Caps, Overrides
from .profile import Profiles

THEMES = ("system", "light", "dark")
DEFAULTS: dict[str, Any] = {"system_prompt": None, "theme": "system"}


def shown(settings: dict[str, Any]) -> dict[str, Any]:
    """Every known setting, a default for any not set."""
    return {key: settings.get(key, default) for key, default in DEFAULTS.items()}


class AccountSettingsService:
    """Reads (cached) and changes a user's own settings."""

    def __init__(self, store: AccountSettingsStore, profiles: Profiles, caps: Caps) -> None:
        self._store = store
        self._profiles = profiles
        self._caps = caps

    async def get(self, user_id: int) -> dict[str, Any]:
        """The user's settings, defaults filled in."""
        return shown((await self._profiles.get(user_id)).settings)

    async def update(self, user_id: int, changes: dict[str, Any],
                     limits: Overrides = None) -> dict[str, Any]:
        """Change some settings (None: back to the default); all of them after."""
        try:
            kept = await self._store.configure(user_id, changes, self._caps.quota(limits))
        finally:
            self._profiles.forget(user_id)
        return shown(kept)
