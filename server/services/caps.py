"""Per-user caps: the config's defaults, or the user's own overrides (`user["limits"]`)."""

from __future__ import annotations

from collections.abc import Mapping

from ..config import LimitsConfig, QueueConfig
from ..storage import Quota
from .limits import Budget, Limits, Rate
from .ratelimit import RateLimited

# A user's overrides, keyed by the config field names of the caps ({} or None: defaults).
Overrides = Mapping[str, int] | None


class ConversationsTooFast(RateLimited):
    """The user starts conversations faster than `conversations_per_user_per_minute`."""


class Caps:
    """Resolves each cap for a user and keeps the conversation-creation rate per user.

    An override has the same meaning as the config key it names (0 included).
    """

    def __init__(self, limits: LimitsConfig, queue: QueueConfig) -> None:
        self._limits_config = limits
        self._queue = queue
        self._limits: Limits | None = None

    @property
    def limits(self) -> Limits:
        """The rate limits (this process's, or shared through Redis), set at start-up."""
        assert self._limits is not None, "Caps.use was not called"
        return self._limits

    def use(self, limits: Limits) -> None:
        """Keep the rate limits here: whoever resolves a user's caps applies them."""
        self._limits = limits

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
                          self._limits_config.monthly_tokens_per_user)

    def quota(self, overrides: Overrides) -> Quota:
        """The user's storage caps (0 = none)."""
        return Quota(
            self.value(overrides, "max_conversations_per_user",
                       self._limits_config.max_conversations_per_user),
            self.value(overrides, "max_stored_chars_per_user",
                       self._limits_config.max_stored_chars_per_user))

    def api_keys(self, overrides: Overrides) -> int:
        """How many API keys the user may have (0 = no cap)."""
        return self.value(overrides, "max_api_keys_per_user",
                          self._limits_config.max_api_keys_per_user)

    def budget(self, user_id: int, overrides: Overrides) -> Budget:
        """The user's monthly token budget, as a check (0 tokens: none)."""
        return Budget(user_id, self.monthly_tokens(overrides))

    def conversation_rate(self, user_id: int, overrides: Overrides) -> Rate:
        """One new conversation, as a check (a rate of 0: no limit)."""
        per_minute = self.value(overrides, "conversations_per_user_per_minute",
                                self._limits_config.conversations_per_user_per_minute)
        return Rate("conversations", user_id, per_minute,
                    f"you are starting conversations too fast (at most {per_minute} a "
                    "minute); continue an existing one or try again shortly",
                    error=ConversationsTooFast)

    async def new_conversation(self, user_id: int, overrides: Overrides) -> None:
        """Count one new conversation; ConversationsTooFast past the user's rate."""
        await self.limits.check(self.conversation_rate(user_id, overrides))
