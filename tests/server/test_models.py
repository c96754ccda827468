"""Several models, through the real app and simulator replicas on real TCP: each model's
requests reach only its replicas, unknown and unavailable models are refused, a conversation
keeps its model; and the `models:` configuration, from a file, the environment and run.py."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from server.config import ConfigError, build_config, load_config
from server.runner import Running
from tests.support.app import User, register_over_http, wait_ready
from tests.support.paths import ROOT
from tests.support.procs import start_server_process
from tests.support.replicas import chat, get, model, seen_by, until
from vllm_sim import SimCluster

Serve = Callable[..., Awaitable[Running]]
Sims = Callable[..., Awaitable[SimCluster]]
ROUTING = {"probe_interval_s": 0.3}


async def two_models(sim_cluster: Sims, serve: Serve) -> tuple[Running, SimCluster, SimCluster]:
    """`alpha` (the default) on two replicas serving sim-a, `beta` on one serving sim-b with
    its own defaults."""
    alpha = await sim_cluster(2, model="sim-a")
    beta = await sim_cluster(1, model="sim-b")
    server = await serve([model("alpha", alpha),
                          model("beta", beta, max_tokens=77, temperature=0.25,
                                system_prompt="You are beta.")],
                         routing=ROUTING)
    return server, alpha, beta


async def api_key(server: Running, user: User) -> dict[str, str]:
    """Headers with a new API key of the user's, for /v1."""
    async with aiohttp.ClientSession(server.url) as s:
        async with s.post("/api/keys", json={"name": "t"}, headers=user.headers) as resp:
            assert resp.status == 201, await resp.text()
            return {"Authorization": f"Bearer {(await resp.json())['key']}"}


async def v1_chat(server: Running, headers: dict[str, str], model_name: str,
                  text: str = "hello") -> tuple[int, dict[str, Any]]:
    """POST /v1/chat/completions; the status and JSON body."""
    async with aiohttp.ClientSession(server.url) as s:
        async with s.post("/v1/chat/completions", headers=headers, json={
                "model": model_name, "messages": [{"role": "user", "content": text}]}) as resp:
            return resp.status, await resp.json()


def served(cluster: SimCluster) -> int:
    """Generation requests the cluster's replicas received."""
    return sum(sim.stats.requests_total for sim in cluster)


def openai_error(body: dict[str, Any], code: str) -> None:
    """OpenAI's error shape with this code."""
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["code"] == code, body


async def conversation_count(server: Running, user: User) -> int:
    """How many conversations the user has."""
    _, page = await get(server, "/api/conversations", user)
    return len(page["conversations"])


async def test_each_model_reaches_only_its_replicas_and_a_conversation_keeps_its_model(
        sim_cluster: Sims, serve: Serve) -> None:
    server, alpha, beta = await two_models(sim_cluster, serve)
    user = await register_over_http(server.url, "someone")
    status, listed = await get(server, "/api/models", user)
    assert status == 200 and listed == {"models": [
        {"name": "alpha", "default": True, "available": True},
        {"name": "beta", "default": False, "available": True}]}

    status, body = await chat(server, user, "to beta", model="beta")
    assert status == 200 and body["message"]["model"] == "beta", body
    assert (served(alpha), served(beta)) == (0, 1)
    sent = seen_by(beta[0])[-1]  # beta's own defaults, under its served name
    assert (sent["model"], sent["max_tokens"], sent["temperature"]) == ("sim-b", 77, 0.25)
    assert sent["messages"][0] == {"role": "system", "content": "You are beta."}
    conv = body["conversation_id"]
    status, body = await chat(server, user, "still beta?", conversation_id=conv)
    assert status == 200 and body["message"]["model"] == "beta", body
    assert (served(alpha), served(beta)) == (0, 2)
    _, shown = await get(server, f"/api/conversations/{conv}", user)
    assert shown["model"] == "beta"
    assert [m.get("model") for m in shown["messages"]] == [None, "beta", None, "beta"]

    status, body = await chat(server, user, "no model named")  # the first model
    assert status == 200 and body["message"]["model"] == "alpha", body
    assert (served(alpha), served(beta)) == (1, 2)
    assert seen_by(next(s for s in alpha if s.stats.requests_total))[-1]["model"] == "sim-a"
    _, shown = await get(server, f"/api/conversations/{body['conversation_id']}", user)
    assert shown["model"] == "alpha"


async def test_a_model_changed_mid_conversation_answers_from_the_next_turn_on(
        sim_cluster: Sims, serve: Serve) -> None:
    server, alpha, beta = await two_models(sim_cluster, serve)
    user = await register_over_http(server.url, "switcher")
    status, body = await chat(server, user, "on alpha")
    conv = body["conversation_id"]
    status, body = await chat(server, user, "now beta", conversation_id=conv, model="beta")
    assert status == 200 and body["message"]["model"] == "beta", body
    assert (served(alpha), served(beta)) == (1, 1)
    sent = seen_by(beta[0])[-1]  # the history so far goes to the new model
    assert [m["content"] for m in sent["messages"] if m["role"] == "user"] == [
        "on alpha", "now beta"]
    status, body = await chat(server, user, "no model named", conversation_id=conv)
    assert status == 200 and body["message"]["model"] == "beta", body  # kept
    assert (served(alpha), served(beta)) == (1, 2)
    _, shown = await get(server, f"/api/conversations/{conv}", user)
    assert shown["model"] == "beta"
    assert [m.get("model") for m in shown["messages"]] == [None, "alpha", None, "beta",
                                                           None, "beta"]


async def test_v1_routes_by_model_and_lists_the_configured_names(sim_cluster: Sims,
                                                                 serve: Serve) -> None:
    server, alpha, beta = await two_models(sim_cluster, serve)
    headers = await api_key(server, await register_over_http(server.url, "programmer"))
    async with aiohttp.ClientSession(server.url) as s:
        async with s.get("/v1/models", headers=headers) as resp:
            assert resp.status == 200
            assert [m["id"] for m in (await resp.json())["data"]] == ["alpha", "beta"]
    for i in range(3):
        status, body = await v1_chat(server, headers, "beta", f"beta {i}")
        assert status == 200, body
    assert (served(alpha), served(beta)) == (0, 3)
    assert all(b["model"] == "sim-b" for b in seen_by(beta[0]))
    status, body = await v1_chat(server, headers, "alpha")
    assert status == 200, body
    assert (served(alpha), served(beta)) == (1, 3)


async def test_v1_session_header_keeps_requests_on_one_replica(sim_cluster: Sims,
                                                               serve: Serve) -> None:
    server, alpha, _ = await two_models(sim_cluster, serve)
    headers = await api_key(server, await register_over_http(server.url, "programmer"))
    for session in ("one", "two"):
        for i in range(4):
            async with aiohttp.ClientSession(server.url) as s:
                async with s.post("/v1/chat/completions",
                                  headers={**headers, "X-Session-Id": session},
                                  json={"model": "alpha", "messages": [
                                      {"role": "user", "content": f"{session} {i}"}]}) as resp:
                    assert resp.status == 200, await resp.text()
        where = {n for n, sim in enumerate(alpha) for body in seen_by(sim)
                 if body["messages"][0]["content"].startswith(f"{session} ")}
        assert len(where) == 1, (session, where)


async def test_a_model_at_its_limit_holds_up_no_other_model(sim_cluster: Sims,
                                                             serve: Serve) -> None:
    alpha = await sim_cluster(1, model="sim-a")
    beta = await sim_cluster(1, model="sim-b", ttft_ms=400)
    server = await serve([model("alpha", alpha),
                          {**model("beta", beta), "replicas": [
                              {"url": beta[0].url, "max_concurrency": 1}]}],
                         routing=ROUTING, queue={"workers": 4, "max_running_per_user": 4})
    flooder = await register_over_http(server.url, "flooder")
    other = await register_over_http(server.url, "other")
    flood = [asyncio.create_task(chat(server, flooder, f"beta {i}", model="beta"))
             for i in range(4)]
    await until(lambda: beta[0].stats.in_flight == 1, what="beta busy")
    status, body = await chat(server, other, "alpha, please")
    assert status == 200 and body["message"]["model"] == "alpha", body
    # Answered while beta's first request still runs: no worker sat waiting for beta's slot.
    assert beta[0].stats.completed == 0
    assert all(status == 200 for status, _ in await asyncio.gather(*flood))
    assert beta[0].stats.max_in_flight == 1


async def test_an_unknown_model_is_404_and_stores_nothing(sim_cluster: Sims,
                                                          serve: Serve) -> None:
    server, alpha, beta = await two_models(sim_cluster, serve)
    user = await register_over_http(server.url, "someone")
    status, body = await chat(server, user, "hello", model="gamma")
    assert status == 404 and body["error"]["code"] == "model_not_found", body
    assert await conversation_count(server, user) == 0
    status, body = await chat(server, user, "hello", model="alpha")
    assert status == 200
    status, body = await chat(server, user, "and now?", model="gamma",
                              conversation_id=body["conversation_id"])
    assert status == 404 and body["error"]["code"] == "model_not_found", body
    status, body = await v1_chat(server, await api_key(server, user), "gamma")
    assert status == 404
    openai_error(body, "model_not_found")
    assert (served(alpha), served(beta)) == (1, 0)


async def test_a_model_with_every_replica_down_fails_fast_with_503(sim_cluster: Sims,
                                                                   serve: Serve) -> None:
    server, alpha, beta = await two_models(sim_cluster, serve)
    admin = await register_over_http(server.url, "admin")
    user = await register_over_http(server.url, "someone")
    headers = await api_key(server, user)
    status, body = await chat(server, user, "hello beta", model="beta")
    assert status == 200
    conv = body["conversation_id"]
    await beta[0].down()

    async def beta_out() -> bool:
        _, listed = await get(server, "/api/models", user)
        return listed["models"][1] == {"name": "beta", "default": False, "available": False}

    await until(beta_out, what="beta seen unavailable")
    status, body = await chat(server, user, "anyone?", model="beta")
    assert status == 503 and body["error"]["code"] == "model_unavailable", body
    assert await conversation_count(server, user) == 1  # the refused new chat left nothing
    status, body = await chat(server, user, "again?", conversation_id=conv)  # its model
    assert status == 503 and body["error"]["code"] == "model_unavailable", body
    status, body = await v1_chat(server, headers, "beta")
    assert status == 503
    openai_error(body, "model_unavailable")
    status, body = await chat(server, user, "alpha is fine")
    assert status == 200, body
    status, ready = await get(server, "/ready", admin)  # another model answers: degraded
    assert status == 200 and ready["status"] == "degraded", ready

    for sim in alpha:
        await sim.down()
    async with aiohttp.ClientSession(server.url) as s:
        await wait_ready(s, 503)  # no model answers
        status, body = await chat(server, user, "anyone at all?")
        assert status == 503 and body["error"]["code"] == "model_unavailable", body
        for sim in [*alpha, *beta]:
            await sim.up()
        await wait_ready(s, 200)
    await until(lambda: _answers(server, user), what="beta back")


async def _answers(server: Running, user: User) -> bool:
    status, _ = await chat(server, user, "back?", model="beta")
    return status == 200


# --- configuration ---------------------------------------------------------------------------

ISSUE_EXAMPLE = """
models:
  - name: chat                 # what clients send as "model" and see in /v1/models
    served_name: llama-3.1-8b  # optional: the name the model server knows it by
    replicas:
      - url: http://gpu1:8000/v1
        api_key: ""            # optional
        max_concurrency: 64    # optional: most requests in flight to this replica
        weight: 1              # optional
      - url: http://gpu2:8000/v1
"""


def test_the_issue_example_parses() -> None:
    (chat_model,) = build_config(yaml.safe_load(ISSUE_EXAMPLE)).models
    assert (chat_model.name, chat_model.served_name) == ("chat", "llama-3.1-8b")
    first, second = chat_model.replicas
    assert (first.url, first.api_key, first.max_concurrency, first.weight) == \
        ("http://gpu1:8000/v1", "", 64, 1.0)
    assert (second.url, second.api_key, second.max_concurrency, second.weight) == \
        ("http://gpu2:8000/v1", "", 0, 1.0)


URL = {"url": "http://gpu1:8000/v1"}


@pytest.mark.parametrize("models,names", [
    ({"name": "chat"}, "models: must be a list"),
    ([{"name": "chat"}], "models[0].replicas"),
    ([{"name": "chat", "replicas": []}], "models[0].replicas"),
    ([{"name": "chat", "replicas": [{"api_key": "k"}]}], "models[0].replicas[0].url"),
    ([{"name": "chat", "replicas": ["http://gpu1:8000/v1"]}], "models[0].replicas[0]"),
    ([{"name": "chat", "replicas": [{"url": "gpu1:8000"}]}], "models[0].replicas[0].url"),
    ([{"replicas": [URL]}], "models[0].name"),
    ([{"name": "chat", "replicas": [URL]}, {"name": "chat", "replicas": [URL]}],
     "models[1].name"),
    ([{"name": "chat", "replicas": [{**URL, "weight": 0}]}], "models[0].replicas[0].weight"),
    ([{"name": "chat", "replicas": [{**URL, "max_concurrency": -1}]}],
     "models[0].replicas[0].max_concurrency"),
    ([{"name": "chat", "replicas": [{**URL, "colour": "red"}]}], "models[0].replicas[0].colour"),
    # Both would be the Authorization header: aiohttp refuses every request (a ValueError).
    ([{"name": "chat", "replicas": [{"url": "http://u:p@gpu1:8000/v1", "api_key": "k"}]}],
     "models[0].replicas[0].api_key"),
    (["chat"], "models[0]"),
    ([{"name": "chat", "replicas": [URL, {"url": "http://gpu1:8000/v1/"}]}],
     "models[0].replicas[1].url"),
])
def test_a_bad_models_entry_is_one_clear_error(models: Any, names: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config({"models": models})
    message = str(caught.value)
    assert message.startswith((names + ":", names + " ")), message
    assert "\n" not in message


def test_the_models_list_from_the_environment() -> None:
    listed = [{"name": "chat", "replicas": [URL, {"url": "http://gpu2:8000/v1",
                                                  "api_key": "k", "max_concurrency": 8}]},
              {"name": "coder", "served_name": "qwen", "replicas": [URL]}]
    for text in (json.dumps(listed), yaml.safe_dump(listed)):
        config = load_config(None, {"CHATGATE_MODELS": text})
        assert [(m.name, m.served_name, len(m.replicas)) for m in config.models] == \
            [("chat", "chat", 2), ("coder", "qwen", 1)]
        assert config.models[0].replicas[1].max_concurrency == 8
    with pytest.raises(ConfigError, match="CHATGATE_MODELS"):
        load_config(None, {"CHATGATE_MODELS": "[{name: chat"})
    with pytest.raises(ConfigError, match=r"models\[0\]\.replicas"):
        load_config(None, {"CHATGATE_MODELS": "[{name: chat}]"})


@pytest.mark.parametrize("replicas,names", [
    ("[]", "models[0].replicas"), ('[{"api_key": "k"}]', "models[0].replicas[0].url")])
async def test_run_py_refuses_a_bad_models_list_in_one_line(replicas: str, names: str) -> None:
    env = {"PATH": "/usr/bin:/bin",
           "CHATGATE_MODELS": f'[{{"name": "chat", "replicas": {replicas}}}]'}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "run.py", cwd=str(ROOT), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 2, (out, err)
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and names in lines[0], lines


async def test_run_py_serves_the_models_of_the_environment(sim_cluster: Sims,
                                                           tmp_path: Path) -> None:
    alpha = await sim_cluster(2, model="sim-a")
    listed = [{"name": "alpha", "served_name": "sim-a",
               "replicas": [{"url": sim.url} for sim in alpha]}]
    server = await start_server_process(tmp_path / "env.db", "http://127.0.0.1:9/v1",
                                        MODELS=json.dumps(listed),
                                        ROUTING__PROBE_INTERVAL_S="0.3",
                                        BACKGROUND__TITLES="false")  # chats only
    try:
        user = await register_over_http(server.url, "someone")
        async with aiohttp.ClientSession(server.url) as s:
            for i in range(4):
                async with s.post("/api/chat", json={"message": f"hi {i}", "model": "alpha"},
                                  headers=user.headers) as resp:
                    body = await resp.json()
                    assert resp.status == 200 and body["message"]["model"] == "alpha", body
        assert served(alpha) == 4
    finally:
        await server.stop()
