"""deploy/ is the topology the cluster tests start: the compose file's services, their
environment (a valid chatgate config), HAProxy's servers and the Dockerfile agree."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.config import load_config
from tests.support.cluster import REPLICAS, Cluster, Shape
from tests.support.haproxy import NODE_NAMES, TEMPLATE
from tests.support.paths import ROOT
from tests.support.postgres import PgCluster

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file, anchors and merge keys resolved."""
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _env(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment with ${VAR:?...} / ${VAR:-default} filled as compose would."""
    def fill(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3)
        if default is not None and match.group(2) == ":-":
            return default
        return f"x-{name}".ljust(48, "x")  # a required secret: long enough for auth.secret
    pattern = re.compile(r"\$\{(\w+)(?:(:[?-])([^}]*))?\}")
    return {k: pattern.sub(fill, str(v)) for k, v in service["environment"].items()}


def test_the_services_are_the_tested_topology(compose: dict[str, Any]) -> None:
    """PostgreSQL, Redis, three nodes named as HAProxy's servers, HAProxy, and two model
    replicas twice over: vLLM on a GPU each (profile gpu) or the simulator (profile sim)."""
    services = compose["services"]
    nodes = sorted(name for name in services if name.startswith("node"))
    assert tuple(nodes) == NODE_NAMES
    assert {"postgres", "redis", "haproxy"} <= set(services)
    vllm = sorted(n for n, s in services.items() if s.get("profiles") == ["gpu"])
    sims = sorted(n for n, s in services.items() if s.get("profiles") == ["sim"])
    assert len(vllm) == len(sims) == REPLICAS
    for name in vllm:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices and all("gpu" in d["capabilities"] for d in devices)
    aliases = {kind: sorted(a for n in names
                            for a in services[n]["networks"]["default"]["aliases"])
               for kind, names in (("gpu", vllm), ("sim", sims))}
    assert aliases["gpu"] == aliases["sim"], "both profiles must answer at the same names"
    for name in nodes:  # every node: the same image and environment, drained before a kill
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
        assert services[name]["environment"] == services[nodes[0]]["environment"]
        env = _env(services[name])
        grace = int(env["CHATGATE_SERVER__SHUTDOWN_GRACE_S"]) + int(env["CHATGATE_SERVER__DRAIN_S"])
        assert int(services[name]["stop_grace_period"].rstrip("s")) > grace
    assert (ROOT / services[nodes[0]]["build"]["dockerfile"]).is_file()


def test_the_nodes_environment_is_a_valid_config_on_the_shared_engines(
        compose: dict[str, Any]) -> None:
    """What compose gives a node loads as chatgate's config: PostgreSQL and Redis by their
    service names, each model replica at a name both profiles answer, HAProxy trusted."""
    services = compose["services"]
    env = _env(services["node1"])
    config = load_config(None, env)
    assert config.database.url.startswith("postgresql://chatgate:x-POSTGRES_PASSWORD")
    assert "@postgres:5432/chatgate" in config.database.url
    assert config.coordination.redis_url == "redis://redis:6379/0"
    assert config.server.trust_forwarded and config.server.host == "0.0.0.0"
    aliases = {a for s in services.values() if s.get("profiles") == ["sim"]
               for a in s["networks"]["default"]["aliases"]}
    (model,) = config.models
    assert len(model.replicas) == REPLICAS
    assert {re.sub(r"^http://([^:/]+):.*$", r"\1", r.url) for r in model.replicas} == aliases
    assert all(r.max_concurrency for r in model.replicas)
    for service in services.values():  # vLLM runs as many sequences as chatgate sends it
        if service.get("profiles") == ["gpu"]:
            command = service["command"]
            seqs = int(command[command.index("--max-num-seqs") + 1])
            assert all(r.max_concurrency == seqs for r in model.replicas)


def test_a_node_drains_longer_than_haproxy_takes_to_mark_it_down(
        compose: dict[str, Any]) -> None:
    """server.drain_s outlasts HAProxy's detection (fall x inter): no new request reaches a
    node whose listener is closing."""
    text = TEMPLATE.read_text()
    inter = re.search(r'inter "\$\{CHECK_INTER-(\d+)s\}"', text)
    fall = re.search(r" fall (\d+) ", text)
    assert inter is not None and fall is not None
    drain = float(_env(compose["services"]["node1"])["CHATGATE_SERVER__DRAIN_S"])
    assert drain > int(inter.group(1)) * int(fall.group(1))


def test_haproxy_in_compose_runs_the_tested_config(compose: dict[str, Any]) -> None:
    """HAProxy mounts deploy/haproxy.cfg (the file the tests run); its servers' defaults are
    the node services on the nodes' port, and it listens where compose publishes."""
    haproxy = compose["services"]["haproxy"]
    assert "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in haproxy["volumes"]
    assert (DEPLOY / "haproxy.cfg") == TEMPLATE
    text = TEMPLATE.read_text()
    port = _env(compose["services"]["node1"])["CHATGATE_SERVER__PORT"]
    for i, name in enumerate(NODE_NAMES, 1):
        assert f'server {name} "${{NODE{i}_ADDR-{name}:{port}}}" check' in text
        assert f'server {name}-open "${{NODE{i}_ADDR-{name}:{port}}}" backup' in text
    bind = re.search(r'bind "\$\{HAPROXY_BIND-:(\d+)\}"', text)
    assert bind is not None and f"{bind.group(1)}:{bind.group(1)}" in haproxy["ports"]
    assert "uri /ready" in text, "health checks go to chatgate's /ready"


def test_the_tests_give_their_nodes_what_compose_gives(compose: dict[str, Any],
                                                      tmp_path: Path) -> None:
    """Every setting compose gives a node that shapes the cluster (the engines, the shared
    secret, the proxy, the models) is one the test topology gives its nodes too."""
    cluster = Cluster(tmp_path, Shape())
    cluster.pg = PgCluster.__new__(PgCluster)  # only its URL is read
    cluster.pg.port = 5432
    env = cluster.node_env(cluster.nodes[0])
    shaping = {"CHATGATE_DATABASE__URL", "CHATGATE_COORDINATION__REDIS_URL",
               "CHATGATE_AUTH__SECRET", "CHATGATE_SERVER__TRUST_FORWARDED", "CHATGATE_MODELS",
               "CHATGATE_SERVER__DRAIN_S", "CHATGATE_SERVER__PROCESSES"}
    assert shaping <= set(_env(compose["services"]["node1"])) and shaping <= set(env)
    assert env["CHATGATE_SERVER__PROCESSES"] == \
        _env(compose["services"]["node1"])["CHATGATE_SERVER__PROCESSES"]
    assert [n.name for n in cluster.nodes] == list(NODE_NAMES)
