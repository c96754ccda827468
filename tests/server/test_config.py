"""Tests for server/config.py: the YAML file, environment overrides and validation."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.config import (
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
    build_config,
    load_config,
)
from tests.support.paths import ROOT as REPO

CONFIG_YAML = REPO / "config.yaml"


def write_yaml(tmp_path: Path, data: Any) -> Path:
    """Write `data` as a YAML config file and return its path."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def config_error(raw: dict[str, Any]) -> str:
    """The message of the ConfigError that build_config raises for `raw`."""
    with pytest.raises(ConfigError) as info:
        build_config(raw)
    return str(info.value)


# --- defaults and the file's shape -------------------------------------------------------------


def test_repo_config_yaml_loads_to_the_defaults() -> None:
    loaded = load_config(CONFIG_YAML, environ={})
    assert loaded == Config()
    assert loaded.server.port == 8080
    assert loaded.database.synchronous == "NORMAL"
    assert loaded.auth.token_ttl_s == 3600
    assert loaded.server.cors_origins == ()
    assert loaded.memory.system_prompt == "You are a helpful assistant."


def test_repo_config_yaml_values_match_dataclass_defaults_key_by_key() -> None:
    raw = yaml.safe_load(CONFIG_YAML.read_text(encoding="utf-8"))
    defaults = Config()
    for section, values in raw.items():
        if section == "models":  # a list: its example is commented
            assert values == [] and defaults.models == ()
            continue
        default_section = getattr(defaults, section)
        for key, value in values.items():
            expected = getattr(default_section, key)
            if isinstance(expected, tuple):
                value = tuple(value)
            assert value == expected, f"{section}.{key}: file {value!r} != default {expected!r}"


def test_every_yaml_key_is_in_the_dataclasses_and_vice_versa() -> None:
    raw = yaml.safe_load(CONFIG_YAML.read_text(encoding="utf-8"))
    assert isinstance(raw, dict)
    hints = typing.get_type_hints(Config)
    assert set(raw) == set(hints), "sections differ between config.yaml and Config"
    assert raw["models"] == [], "config.yaml's models list is an example, commented"
    for section, cls in hints.items():
        if section == "models":
            continue
        file_keys = set(raw[section] or {})
        class_keys = {f.name for f in dataclasses.fields(cls)}
        assert file_keys == class_keys, (
            f"{section}: only in file {sorted(file_keys - class_keys)}, "
            f"only in {cls.__name__} {sorted(class_keys - file_keys)}")


def test_section_classes_are_the_ones_config_uses() -> None:
    hints = typing.get_type_hints(Config)
    assert hints == {"server": ServerConfig, "database": DatabaseConfig, "auth": AuthConfig,
                     "limits": LimitsConfig, "llm": LLMConfig, "queue": QueueConfig,
                     "background": BackgroundConfig, "chat": ChatConfig,
                     "memory": MemoryConfig, "memories": MemoriesConfig,
                     "usage": UsageConfig, "coordination": CoordinationConfig,
                     "metrics": MetricsConfig,
                     "render": RenderConfig, "models": tuple[ModelConfig, ...],
                     "routing": RoutingConfig}


def test_empty_file_and_no_file_give_defaults(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    assert load_config(empty, environ={}) == Config()
    assert load_config(None, environ={}) == Config()


def test_file_values_override_defaults(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"server": {"port": 9001, "cors_origins": ["https://a.example"]},
                                 "llm": {"temperature": 1}, "auth": {"register_open": False}})
    loaded = load_config(path, environ={})
    assert loaded.server.port == 9001
    assert loaded.server.cors_origins == ("https://a.example",)
    assert loaded.llm.temperature == 1.0 and isinstance(loaded.llm.temperature, float)
    assert loaded.auth.register_open is False
    assert loaded.server.host == "127.0.0.1"  # untouched keys keep their defaults


# --- environment overrides -------------------------------------------------------------------


def test_env_int_override_wins_over_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"auth": {"token_ttl_s": 999}})
    loaded = load_config(path, environ={"CHATGATE_AUTH__TOKEN_TTL_S": "60"})
    assert loaded.auth.token_ttl_s == 60


def test_env_override_applies_on_top_of_repo_file() -> None:
    loaded = load_config(CONFIG_YAML, environ={"CHATGATE_SERVER__PORT": "9000"})
    assert loaded.server.port == 9000
    assert loaded.replace("server", port=8080) == Config()


@pytest.mark.parametrize("raw,expected", [
    ("true", True), ("1", True), ("yes", True), ("on", True), ("TRUE", True),
    ("false", False), ("0", False), ("no", False), ("off", False), (" Off ", False),
])
def test_env_bool_override(tmp_path: Path, raw: str, expected: bool) -> None:
    path = write_yaml(tmp_path, {"auth": {"register_open": not expected},
                                 "server": {"trust_forwarded": not expected}})
    loaded = load_config(path, environ={"CHATGATE_AUTH__REGISTER_OPEN": raw,
                                        "CHATGATE_SERVER__TRUST_FORWARDED": raw})
    assert loaded.auth.register_open is expected
    assert loaded.server.trust_forwarded is expected


def test_env_float_override(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"llm": {"temperature": 0.1}})
    loaded = load_config(path, environ={"CHATGATE_LLM__TEMPERATURE": "1.25",
                                        "CHATGATE_LIMITS__UPSTREAM_RPS": "7"})
    assert loaded.llm.temperature == 1.25
    assert loaded.limits.upstream_rps == 7.0 and isinstance(loaded.limits.upstream_rps, float)


def test_env_string_override() -> None:
    loaded = load_config(None, environ={"CHATGATE_MEMORY__SYSTEM_PROMPT": "Be brief.",
                                        "CHATGATE_DATABASE__SYNCHRONOUS": "FULL"})
    assert loaded.memory.system_prompt == "Be brief."
    assert loaded.database.synchronous == "FULL"


def test_env_comma_list_for_cors_origins(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"server": {"cors_origins": ["https://file.example"]}})
    loaded = load_config(path, environ={
        "CHATGATE_SERVER__CORS_ORIGINS": "https://a.example, https://b.example,,"})
    assert loaded.server.cors_origins == ("https://a.example", "https://b.example")
    cleared = load_config(path, environ={"CHATGATE_SERVER__CORS_ORIGINS": ""})
    assert cleared.server.cors_origins == ()


def test_unrelated_environment_is_ignored() -> None:
    loaded = load_config(None, environ={"CHATGATE_PORT": "1", "OTHER__X": "2", "PATH": "/bin"})
    assert loaded == Config()


# --- errors name the key ---------------------------------------------------------------------


def test_unknown_section_is_an_error(tmp_path: Path) -> None:
    msg = config_error({"serverz": {"port": 1}})
    assert "serverz" in msg and "unknown section" in msg
    with pytest.raises(ConfigError, match="serverz"):
        load_config(write_yaml(tmp_path, {"serverz": {"port": 1}}), environ={})


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    msg = config_error({"server": {"prot": 1}})
    assert "server.prot" in msg and "unknown key" in msg
    with pytest.raises(ConfigError, match=r"auth\.ttl"):
        load_config(write_yaml(tmp_path, {"auth": {"ttl": 5}}), environ={})


@pytest.mark.parametrize("section,key,value", [
    ("server", "port", "8080"),           # string for int
    ("server", "port", True),             # bool for int
    ("server", "port", 80.5),             # float for int
    ("auth", "token_ttl_s", "60"),
    ("database", "read_connections", False),
    ("auth", "register_open", "yes"),     # string for bool (file values are not parsed)
    ("auth", "register_open", 1),         # int for bool
    ("llm", "temperature", "hot"),        # string for float
    ("llm", "temperature", True),         # bool for float
    ("llm", "base_url", 5),               # int for str
    ("server", "cors_origins", "https://a.example"),  # string for list
    ("server", "cors_origins", [1, 2]),   # list of non-strings
])
def test_wrong_type_is_an_error_naming_the_key(section: str, key: str, value: Any) -> None:
    msg = config_error({section: {key: value}})
    assert f"{section}.{key}" in msg


def test_section_that_is_not_a_mapping_is_an_error() -> None:
    assert "server" in config_error({"server": [1, 2]})


@pytest.mark.parametrize("section,key,value", [
    ("server", "port", -1),
    ("server", "shutdown_grace_s", -0.5),
    ("llm", "retries", -1),
    ("queue", "max_per_user", -3),
    ("memory", "max_history_messages", -1),
])
def test_negative_number_is_an_error(section: str, key: str, value: Any) -> None:
    msg = config_error({section: {key: value}})
    assert f"{section}.{key}" in msg and "0 or more" in msg


@pytest.mark.parametrize("section,key", [
    ("server", "max_body_bytes"), ("database", "read_connections"), ("database", "max_batch"),
    ("auth", "token_ttl_s"), ("auth", "cache_size"), ("limits", "login_per_ip_per_minute"),
    ("limits", "upstream_rps"), ("llm", "request_timeout_s"), ("queue", "workers"),
    ("queue", "max_size"), ("memory", "max_history_tokens"),
])
def test_zero_where_positive_required_is_an_error(section: str, key: str) -> None:
    msg = config_error({section: {key: 0}})
    assert f"{section}.{key}" in msg and "greater than 0" in msg


def test_zero_is_fine_where_allowed() -> None:
    loaded = build_config({"llm": {"retries": 0}, "queue": {"max_per_user": 0},
                           "memory": {"max_history_messages": 0}, "server": {"port": 0}})
    assert loaded.llm.retries == 0 and loaded.queue.max_per_user == 0


def test_port_above_65535_is_an_error() -> None:
    assert "server.port" in config_error({"server": {"port": 65536}})


@pytest.mark.parametrize("value", ["SOMETIMES", "normal", "", "ALWAYS"])
def test_bad_synchronous_choice_is_an_error(value: str) -> None:
    msg = config_error({"database": {"synchronous": value}})
    assert "database.synchronous" in msg and "NORMAL" in msg


@pytest.mark.parametrize("value", ["OFF", "NORMAL", "FULL", "EXTRA"])
def test_good_synchronous_choices(value: str) -> None:
    assert build_config({"database": {"synchronous": value}}).database.synchronous == value


def test_database_url_from_the_environment_selects_postgres_and_stays_out_of_repr() -> None:
    url = "postgresql://chat:pa55-word@db.internal:5432/chatgate"
    loaded = load_config(None, environ={"CHATGATE_DATABASE__URL": url,
                                        "CHATGATE_DATABASE__POOL_SIZE": "4"})
    assert loaded.database.url == url and loaded.database.pool_size == 4
    assert "pa55-word" not in repr(loaded) and "pa55-word" not in repr(loaded.database)
    assert build_config({}).database.url == ""  # SQLite by default


@pytest.mark.parametrize("value", ["mysql://u:pa55-word@h/db", "db.internal", "sqlite:///x"])
def test_a_database_url_that_is_not_postgresql_is_an_error_without_echoing_it(
        value: str) -> None:
    msg = config_error({"database": {"url": value}})
    assert "database.url" in msg and "postgresql://" in msg and value not in msg


@pytest.mark.parametrize("key", ["pool_size", "connect_timeout_s"])
def test_postgres_pool_settings_must_be_positive(key: str) -> None:
    assert f"database.{key}" in config_error({"database": {key: 0}})


def test_too_short_secret_is_an_error() -> None:
    msg = config_error({"auth": {"secret": "x" * 31}})
    assert "auth.secret" in msg and "32" in msg
    assert build_config({"auth": {"secret": "x" * 32}}).auth.secret == "x" * 32
    assert build_config({"auth": {"secret": ""}}).auth.secret == ""


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "config.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing, environ={})
    assert str(missing) in str(info.value)


def test_unreadable_file_is_an_error(tmp_path: Path) -> None:
    # A directory cannot be read as a file, even by root (mode bits would not stop root).
    folder = tmp_path / "a_directory.yaml"
    folder.mkdir()
    with pytest.raises(ConfigError) as info:
        load_config(folder, environ={})
    assert str(folder) in str(info.value) and "cannot read" in str(info.value)


def test_non_utf8_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"memory:\n  system_prompt: \"caf\xe9\"\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text", ["server: [unclosed\n", "server:\n  port: 1\n   host: x\n",
                                  "a: b: c\n", "\tserver: {}\n"])
def test_invalid_yaml_is_an_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(path) in str(info.value) and "YAML" in str(info.value)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_yaml_that_is_not_a_mapping_is_an_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "list.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path, environ={})


@pytest.mark.parametrize("name,value,key", [
    ("CHATGATE_SERVER__PORT", "eighty", "server.port"),
    ("CHATGATE_SERVER__PORT", "-5", "server.port"),
    ("CHATGATE_AUTH__TOKEN_TTL_S", "0", "auth.token_ttl_s"),
    ("CHATGATE_AUTH__TOKEN_TTL_S", "1.5", "auth.token_ttl_s"),
    ("CHATGATE_AUTH__REGISTER_OPEN", "maybe", "auth.register_open"),
    ("CHATGATE_LLM__TEMPERATURE", "warm", "llm.temperature"),
    ("CHATGATE_DATABASE__SYNCHRONOUS", "SOMETIMES", "database.synchronous"),
])
def test_bad_env_value_names_the_variable_and_key(name: str, value: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(CONFIG_YAML, environ={name: value})
    msg = str(info.value)
    assert name in msg and key in msg


def test_env_unknown_key_and_section_are_errors() -> None:
    with pytest.raises(ConfigError, match=r"server\.prot"):
        load_config(None, environ={"CHATGATE_SERVER__PROT": "1"})
    with pytest.raises(ConfigError, match="nosuch"):
        load_config(None, environ={"CHATGATE_NOSUCH__PORT": "1"})


def test_errors_are_one_line() -> None:
    for raw in ({"server": {"port": "x"}}, {"nope": {}}, {"auth": {"secret": "short"}}):
        assert "\n" not in config_error(raw)


# --- run.py ----------------------------------------------------------------------------------


async def test_run_py_with_missing_config_exits_2_with_one_line() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "run.py", "--config", "/nonexistent", cwd=str(REPO),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 2, (out, err)
    text = err.decode()
    assert "Traceback" not in text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "/nonexistent" in lines[0]


async def test_run_py_with_bad_env_value_exits_2_naming_the_variable() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "run.py", "--config", str(CONFIG_YAML), cwd=str(REPO),
        env={"PATH": "/usr/bin:/bin", "CHATGATE_SERVER__PORT": "nope"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 2, (out, err)
    text = err.decode()
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1
    assert "CHATGATE_SERVER__PORT" in text


def test_registration_modes_and_the_older_register_open_switch() -> None:
    assert build_config({}).auth.registration_mode == "open"
    assert build_config({"auth": {"register_open": False}}).auth.registration_mode == "closed"
    assert build_config({"auth": {"registration": "approval", "register_open": False}}) \
        .auth.registration_mode == "approval"
    assert build_config({"auth": {"admins": ["root", "ops"]}}).auth.admins == ("root", "ops")
    with pytest.raises(ConfigError, match="auth.registration: must be one of open, closed"):
        build_config({"auth": {"registration": "invite"}})


@pytest.mark.parametrize(("trust", "hops", "expected"), [
    (False, 0, 0), (True, 0, 1), (True, 2, 2), (False, 3, 3),
])
def test_proxy_hops_from_trust_forwarded_or_the_hop_count(trust: bool, hops: int,
                                                           expected: int) -> None:
    loaded = build_config({"server": {"trust_forwarded": trust, "trusted_proxy_hops": hops}})
    assert loaded.server.proxy_hops == expected


def test_a_bad_metrics_allow_from_entry_is_refused_at_load() -> None:
    with pytest.raises(ConfigError, match="metrics.allow_from: '10.0.0.0/33'"):
        build_config({"metrics": {"allow_from": ["127.0.0.1", "10.0.0.0/33"]}})


@pytest.mark.parametrize("share", [0, 1.5, -0.1])
def test_background_share_must_be_more_than_0_and_at_most_1(share: float) -> None:
    with pytest.raises(ConfigError, match=r"^background\.share: must be"):
        build_config({"background": {"share": share}})


def test_background_share_of_one_and_the_defaults_load() -> None:
    assert build_config({"background": {"share": 1}}).background.share == 1.0
    background = build_config({}).background
    assert (background.share, background.max_waiting, background.titles) == (0.25, 256, True)


@pytest.mark.parametrize("url", ["http://redis:6379", "redis:6379", "localhost"])
def test_redis_url_must_name_a_redis_address(url: str) -> None:
    with pytest.raises(ConfigError, match="coordination.redis_url"):
        build_config({"coordination": {"redis_url": url}})


@pytest.mark.parametrize("ttl", [1.0, 0.5])
def test_a_node_ttl_not_longer_than_its_heartbeat_is_refused(ttl: float) -> None:
    # A live node's key would lapse between two beats and its turns be ended by another.
    with pytest.raises(ConfigError, match="coordination.node_ttl_s"):
        build_config({"coordination": {"heartbeat_s": 1, "node_ttl_s": ttl}})
    assert build_config({"coordination": {"heartbeat_s": 1, "node_ttl_s": 1.5}})
