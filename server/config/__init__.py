"""Typed, validated configuration: config.yaml, then CHATGATE_* environment overrides.

`sections.py` holds the typed sections (one per component) and `Config`; `load.py` reads
and checks them.
"""

from .load import ENV_PREFIX, build_config, load_config
from .sections import (
    AuthConfig,
    BackgroundConfig,
    ChatConfig,
    Config,
    ConfigError,
    CoordinationConfig,
    DatabaseConfig,
    LimitsConfig,
    LLMConfig,
    MemoriesConfig,
    MemoryConfig,
    MetricsConfig,
    ModelConfig,
    QueueConfig,
    RenderConfig,
    RoutingConfig,
    ServerConfig,
    UsageConfig,
)

__all__ = [
    "ENV_PREFIX",
    "AuthConfig",
    "BackgroundConfig",
    "ChatConfig",
    "Config",
    "ConfigError",
    "CoordinationConfig",
    "DatabaseConfig",
    "LLMConfig",
    "LimitsConfig",
    "MemoriesConfig",
    "MemoryConfig",
    "MetricsConfig",
    "ModelConfig",
    "QueueConfig",
    "RenderConfig",
    "RoutingConfig",
    "ServerConfig",
    "UsageConfig",
    "build_config",
    "load_config",
]
