"""Reading the configuration: config.yaml, then CHATGATE_* environment overrides, checked
key by key into the typed sections (the first bad key stops start-up with one line)."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from workers.replica import ReplicaSpec

from .sections import Config, ConfigError, ModelConfig

ENV_PREFIX = "CHATGATE_"

# Keys whose value may be zero but not negative are the default; these must be > 0.
_POSITIVE = {
    "server.max_body_bytes", "server.header_timeout_s", "server.body_timeout_s",
    "server.keepalive_timeout_s",
    "server.max_connections", "server.processes", "database.read_connections",
    "database.max_batch", "database.pool_size", "database.connect_timeout_s",
    "auth.token_ttl_s", "auth.cache_ttl_s", "auth.cache_size", "limits.login_per_ip_per_minute",
    "limits.login_failures_per_account", "limits.login_backoff_max_s",
    "limits.chat_per_user_per_minute", "limits.max_import_bytes", "limits.upstream_rps",
    "llm.connect_timeout_s",
    "llm.first_token_timeout_s", "llm.request_timeout_s", "llm.max_tokens", "queue.max_size",
    "queue.workers", "memory.max_history_tokens", "usage.flush_interval_s",
    "render.processes", "render.max_render_cpu_s", "render.max_pending_chars", "render.wait_s",
    "render.cache_mb", "routing.probe_interval_s", "routing.probe_timeout_s",
    "routing.failure_window_s", "routing.failure_min_requests", "routing.cooldown_s",
    "routing.max_cooldown_s", "routing.metrics_max_age_s", "routing.affinity_ttl_s",
    "routing.affinity_size", "chat.finished_turn_ttl_s", "memories.max_per_user",
    "memories.cache_size", "background.share", "background.max_waiting",
    "background.summary_max_tokens", "coordination.timeout_s",
    "coordination.health_interval_s", "coordination.lease_ttl_s", "coordination.lease_renew_s",
    "coordination.heartbeat_s", "coordination.node_ttl_s", "coordination.stream_flush_s",
    "coordination.stream_max_records",
}
_CHOICES = {"database.synchronous": ("OFF", "NORMAL", "FULL", "EXTRA"),
            "auth.registration": ("open", "closed", "approval")}


def load_config(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the YAML file (if any), apply environment overrides and validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(Path(path))
    env = os.environ if environ is None else environ
    for name, value in env.items():
        if name == f"{ENV_PREFIX}MODELS":  # the whole list, as YAML or JSON
            try:
                raw["models"] = yaml.safe_load(value)
            except yaml.YAMLError as err:
                raise ConfigError(f"models: {name} is not valid YAML: {err}") from err
            continue
        if name.startswith(ENV_PREFIX) and "__" in name:
            section, _, key = name[len(ENV_PREFIX):].lower().partition("__")
            raw.setdefault(section, {})
            if not isinstance(raw[section], dict):
                raise ConfigError(f"{section}: must be a mapping")
            raw[section][key] = _EnvValue(value, name)
    return build_config(raw)


def build_config(raw: Mapping[str, Any]) -> Config:
    """Validate a nested mapping into a Config, naming the first bad key."""
    sections: dict[str, Any] = {}
    hints = typing.get_type_hints(Config)
    for section, value in raw.items():
        if section not in hints:
            raise ConfigError(f"{section}: unknown section (known: {', '.join(hints)})")
        if value is None:
            continue
        if section == "models":
            sections[section] = _build_models(value)
            continue
        if not isinstance(value, Mapping):
            raise ConfigError(f"{section}: must be a mapping of keys to values")
        sections[section] = _build_section(section, hints[section], value)
    coordination = sections.get("coordination")
    if coordination is not None and coordination.node_ttl_s <= coordination.heartbeat_s:
        # A live node's key must not expire between two beats: its turns would be ended.
        raise ConfigError("coordination.node_ttl_s: must be longer than coordination."
                          f"heartbeat_s ({coordination.heartbeat_s:g}), e.g. three times it")
    return Config(**sections)


def _build_models(value: Any) -> tuple[ModelConfig, ...]:
    """The `models` list: each a mapping with a unique name and at least one replica."""
    if not isinstance(value, list):
        raise ConfigError("models: must be a list of models (each with a name and replicas)")
    models: list[ModelConfig] = []
    for i, entry in enumerate(value):
        where = f"models[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: must be a mapping with name and replicas")
        entry = dict(entry)
        replicas = entry.pop("replicas", None)
        if not isinstance(replicas, list) or not replicas:
            raise ConfigError(f"{where}.replicas: must be a list of at least one replica "
                              "(each with a url)")
        model = _build_section(where, ModelConfig, entry)
        if not model.name:
            raise ConfigError(f"{where}.name: must be given (what clients ask for)")
        if model.temperature is not None and model.temperature > 2:
            raise ConfigError(f"{where}.temperature: must be between 0 and 2")
        if any(m.name == model.name for m in models):
            raise ConfigError(f"{where}.name: {model.name!r} is listed twice")
        specs = tuple(_build_replica(f"{where}.replicas[{j}]", r) for j, r in enumerate(replicas))
        urls = [spec.url.rstrip("/") for spec in specs]
        for j, url in enumerate(urls):
            if url in urls[:j]:  # one server counted twice: two caps, two health states
                raise ConfigError(f"{where}.replicas[{j}].url: listed twice for this model")
        models.append(dataclasses.replace(model, replicas=specs,
                                          served_name=model.served_name or model.name))
    return tuple(models)


def _build_replica(where: str, value: Any) -> ReplicaSpec:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: must be a mapping with a url")
    if "url" not in value:  # else ReplicaSpec() fails with a TypeError, not one clear line
        raise ConfigError(f"{where}.url: must be given, e.g. http://gpu1:8000/v1")
    spec: ReplicaSpec = _build_section(where, ReplicaSpec, value)
    if not spec.url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.url: must be an http:// or https:// address, "
                          "e.g. http://gpu1:8000/v1")
    if spec.weight <= 0:
        raise ConfigError(f"{where}.weight: must be greater than 0, got {spec.weight}")
    # A key and user:password@ would both be the Authorization header: aiohttp refuses them.
    if spec.api_key and "@" in spec.url.split("//", 1)[-1].split("/", 1)[0]:
        raise ConfigError(f"{where}.api_key: cannot be used with user:password@ in the url "
                          "(both go in the Authorization header): give one of them")
    return spec


class _EnvValue(str):
    """A string from the environment, parsed into the key's type."""

    source: str

    def __new__(cls, value: str, source: str) -> _EnvValue:
        obj = super().__new__(cls, value)
        obj.source = source
        return obj


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of sections")
    return data


def _build_section(section: str, cls: type, values: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{section}.{key}"
        if key not in hints:
            raise ConfigError(f"{name}: unknown key (known: {', '.join(hints)})")
        kwargs[key] = _check(name, hints[key], value)
    return cls(**kwargs)


def _check(name: str, kind: Any, value: Any) -> Any:
    where = f" (from {value.source})" if isinstance(value, _EnvValue) else ""
    try:
        result = _coerce(kind, value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name}: {err}{where}") from err
    if isinstance(result, (int, float)) and not isinstance(result, bool):
        if result < 0 or (name in _POSITIVE and result == 0):
            bound = "greater than 0" if name in _POSITIVE else "0 or more"
            raise ConfigError(f"{name}: must be {bound}, got {result}{where}")
    if name == "background.share" and result > 1:
        raise ConfigError(f"{name}: must be more than 0 and at most 1, got {result}{where}")
    if name == "routing.failure_ratio" and not 0 < result < 1:
        raise ConfigError(f"{name}: must be between 0 and 1, got {result}{where}")
    if name == "server.port" and result > 65535:
        raise ConfigError(f"{name}: must be at most 65535, got {result}{where}")
    if name == "database.url" and result and not result.startswith(
            ("postgresql://", "postgres://")):
        # The value itself is not quoted: it may carry a password.
        raise ConfigError(f"{name}: must be empty (SQLite at database.path) or a "
                          f"postgresql:// address{where}")
    if name == "auth.secret" and result and len(result) < 32:
        raise ConfigError(f"{name}: must be at least 32 characters (or empty to generate one)")
    if name == "metrics.allow_from":
        for entry in result:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError as err:
                raise ConfigError(f"{name}: {entry!r} is not an address or network{where}") \
                    from err
    if name == "coordination.redis_url" and result \
            and not result.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{name}: must be a redis://, rediss:// or unix:// address{where}")
    if name in _CHOICES and result not in _CHOICES[name]:
        raise ConfigError(f"{name}: must be one of {', '.join(_CHOICES[name])}{where}")
    return result


def _coerce(kind: Any, value: Any) -> Any:
    env = isinstance(value, _EnvValue)
    if isinstance(kind, types.UnionType):  # `X | None`: null (or "" from the environment)
        if value is None or (env and not value.strip()):
            return None
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if kind is bool:
        if env and value.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if env and value.strip().lower() in ("0", "false", "no", "off"):
            return False
        if isinstance(value, bool) and not env:
            return value
        raise TypeError(f"must be true or false, got {value!r}")
    if kind is int:
        if env:
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"must be a whole number, got {value!r}")
        return value
    if kind is float:
        if env:
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"must be a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise TypeError(f"must be a string, got {value!r}")
        return str(value)
    if typing.get_origin(kind) is tuple or isinstance(kind, types.GenericAlias):
        if env:
            return tuple(part.strip() for part in value.split(",") if part.strip())
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"must be a list of strings, got {value!r}")
        return tuple(value)
    raise TypeError(f"unsupported type {kind!r}")
