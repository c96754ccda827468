"""Per-user caps: the config's defaults, or the user's own overrides (`user["limits"]`)."""

from __future__ import annotations

from collections.abc import Mapping

from ..config import LimitsConfig, QueueConfig
from ..storage import Quota
from .ratelimit import KeyedRateLimiter, RateLimited

# A user's overrides, keyed by the config field names of the caps ({} or None: defaults).
Overrides = Mapping[str, int] | None


class ConversationsTooFast(RateLimited):
    """The user starts conversations faster than `conversations_per_user_per_minute`."""


class Caps:
    """Resolves each cap for a user and keeps the conversation-creation rate per user.

    An override has the same meaning as the config key it names (0 included).
    """

    def __init__(self, limits: LimitsConfig, queue: QueueConfig) -> None:
        self._limits = limits
        self._queue = queue
        self._rates: dict[int, KeyedRateLimiter] = {}  # one limiter per rate in use

    @staticmethod
    def value(overrides: Overrides, name: str, default: int) -> int:
        """The user's override of `name` if it is a whole number >= 0, else the default."""
        value = (overrides or {}).get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        return default

    def running(self, overrides: Overrides) -> int:
        """How many workers the user's jobs may hold at once."""
        own = self.value(overrides, "max_running_per_user", self._queue.max_running_per_user)
        return own or self._queue.running_cap

    def monthly_tokens(self, overrides: Overrides) -> int:
        """The user's monthly token budget (0 = none)."""
        return self.value(overrides, "monthly_tokens_per_user",
                          self._limits.monthly_tokens_per_user)

    def quota(self, overrides: Overrides) -> Quota:
        """The user's storage caps (0 = none)."""
        return Quota(
            self.value(overrides, "max_conversations_per_user",
                       self._limits.max_conversations_per_user),
            self.value(overrides, "max_stored_chars_per_user",
                       self._limits.max_stored_chars_per_user))

    def api_keys(self, overrides: Overrides) -> int:
        """How many API keys the user may have (0 = no cap)."""
        return self.value(overrides, "max_api_keys_per_user",
                          self._limits.max_api_keys_per_user)

    def new_conversation(self, user_id: int, overrides: Overrides) -> None:
        """Count one new conversation; ConversationsTooFast past the user's rate."""
        per_minute = self.value(overrides, "conversations_per_user_per_minute",
                                self._limits.conversations_per_user_per_minute)
        if not per_minute:
            return
        limiter = self._rates.get(per_minute)
        if limiter is None:
            limiter = self._rates[per_minute] = KeyedRateLimiter(per_minute)
        retry_after = limiter.hit(user_id)
        if retry_after is not None:
            raise ConversationsTooFast(
                retry_after, f"you are starting conversations too fast (at most {per_minute} "
                "a minute); continue an existing one or try again shortly")
