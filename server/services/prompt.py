"""Prompt assembly: the system prompt of a turn (by precedence, with the user's memories), its
max tokens and temperature, and the preview of what the next turn would send."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workers.errors import ModelNotFound
from workers.router import ModelRoute, Router

from ..config import LLMConfig, MemoryConfig, ModelConfig
from ..storage import PromptStore
from .memory import MemoryManager
from .profile import Profile, Profiles


@dataclass(frozen=True, slots=True)
class TurnSettings:
    """What a turn asks of the model besides its messages' history."""

    system: str  # "" = no system message
    max_tokens: int
    temperature: float


class PromptAssembler:
    """Resolves each setting of a turn from the most specific place that sets it."""

    def __init__(self, profiles: Profiles, router: Router, models: tuple[ModelConfig, ...],
                 defaults: LLMConfig, memory_config: MemoryConfig, memory: MemoryManager,
                 prompts: PromptStore) -> None:
        self._profiles = profiles
        self._router = router
        self._models = {model.name: model for model in models}
        self._defaults = defaults
        self._memory_config = memory_config
        self._memory = memory
        self._prompts = prompts

    async def profile(self, user_id: int) -> Profile:
        """The user's settings and memories (cached: no database read once known)."""
        return await self._profiles.get(user_id)

    def settings(self, profile: Profile, model_name: str, own: dict[str, Any],
                 max_tokens: int | None = None,
                 temperature: float | None = None) -> TurnSettings:
        """Each setting from the turn, else the conversation's own (`own`), else the user's
        account (system prompt only), else the model's, else the `llm` and `memory`
        sections'. The user's enabled, active memories that fit `memories.max_tokens` follow
        the system prompt."""
        model = self._models.get(model_name)
        system = own.get("system_prompt")
        if system is None:
            system = profile.settings.get("system_prompt")
        if system is None and model is not None:
            system = model.system_prompt
        if system is None:
            system = self._memory_config.system_prompt
        if profile.block:
            system = f"{system}\n\n{profile.block}" if system else profile.block
        tokens = max_tokens or own.get("max_tokens") or (model.max_tokens if model else 0) \
            or self._defaults.max_tokens
        if temperature is None:
            temperature = own.get("temperature")
        if temperature is None and model is not None:
            temperature = model.temperature
        return TurnSettings(system, int(tokens), float(
            temperature if temperature is not None else self._defaults.temperature))

    async def preview(self, user_id: int, conversation_id: int | None,
                      model: str | None = None,
                      settings: dict[str, Any] | None = None) -> dict[str, Any]:
        """What the next turn would send, without its new message: of a conversation
        (NotFound), or of a new chat made with `settings` (its own, as its first turn would
        store them). `model` (ModelNotFound) is the one the turn would pick; else the
        conversation's, else the default."""
        history: list[dict[str, str]] = []
        own: dict[str, Any] = dict(settings or {})
        route = self._router.find(model) if model else None
        if conversation_id is not None:
            rows, used = await self._prompts.next_turn(
                user_id, conversation_id, self._memory_config.max_history_messages)
            history, own = self._memory.within_budget(rows), used.settings
            if route is None:
                route = self._route_of(used.model)
        route = route or self._router.default
        turn = self.settings(await self._profiles.get(user_id), route.name, own)
        messages = self._memory.prompt(history, "", turn.system)[:-1]  # the new one left out
        return {"messages": messages, "model": route.name or None,
                "max_tokens": turn.max_tokens, "temperature": turn.temperature}

    def _route_of(self, model: str | None) -> ModelRoute:
        """The conversation's model, or the first one if it has none (or it is gone)."""
        try:
            return self._router.find(model)
        except ModelNotFound:
            return self._router.default
