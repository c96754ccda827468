"""/ready and the model server's URL: the public learns ok/unavailable; no one sees credentials."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from server.runner import Running, start
from tests.support.app import error_of, make_config, register_over_http
from tests.support.procs import free_port
from workers.upstream import redact_url

SECRET = "s3cret-pass"


@pytest.fixture
async def dead(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Running]:
    """The app pointed at a model server URL with credentials, where nothing listens."""
    caplog.set_level(logging.DEBUG)
    port = free_port()
    running = await start(make_config(tmp_path, f"http://admin:{SECRET}@127.0.0.1:{port}/v1",
                                      llm={"retries": 0, "model": ""}))
    yield running
    await running.stop()


async def test_ready_tells_everyone_only_ok(server: Running, register) -> None:
    await register()  # the first account is the admin
    user = await register()
    async with aiohttp.ClientSession(server.url) as s:
        for headers in ({}, user.headers):  # a signed-in user who is no admin learns no more
            async with s.get("/ready", headers=headers) as r:
                assert r.status == 200 and await r.json() == {"status": "ok"}


async def test_unready_shows_no_url_or_credentials(dead: Running, caplog) -> None:
    await register_over_http(dead.url, "chief")  # the first account is the admin
    user = await register_over_http(dead.url, "asker")
    async with aiohttp.ClientSession(dead.url) as s:
        async with s.get("/ready") as r:
            assert r.status == 503 and await r.json() == {"status": "unavailable"}
        async with s.get("/ready", headers=user.headers) as r:
            assert await r.json() == {"status": "unavailable"}
        async with s.post("/api/chat", json={"message": "hello"}, headers=user.headers) as r:
            error = await error_of(r, 503, "model_unavailable")
            assert SECRET not in error["message"] and "127.0.0.1" not in error["message"]
        async with s.post("/v1/chat/completions", headers=user.headers,
                          json={"model": "m", "messages": [{"role": "user", "content": "x"}]}
                          ) as r:
            text = await r.text()
            assert r.status == 503 and SECRET not in text and "127.0.0.1" not in text
        async with s.get("/metrics") as r:
            metrics = await r.text()
    assert "chatgate_ready 0.0" in metrics
    assert 'chatgate_ready_failures_total{kind="model_server"}' in metrics and SECRET not in metrics
    records = caplog.get_records("setup") + caplog.get_records("call")
    logged = "\n".join(r.getMessage() for r in records)
    assert SECRET not in logged and "admin:" not in logged
    assert "http://***@127.0.0.1:" in logged  # the start-up warning names it, redacted


async def test_admin_sees_why(dead: Running) -> None:
    """The details, for an admin: the reasons' kinds, the redacted URL, the queue."""
    user = await register_over_http(dead.url, "boss")  # the first account: the admin
    async with aiohttp.ClientSession(dead.url) as s:
        async with s.get("/api/auth/verify", headers=user.headers) as r:
            assert (await r.json())["user"]["role"] == "admin"
        async with s.get("/ready", headers=user.headers) as r:
            body = await r.json()
    assert r.status == 503 and body["status"] == "unavailable"
    assert [p["kind"] for p in body["problems"]] == ["model_server"]
    assert body["model_server"].startswith("http://***@127.0.0.1:") and "queue" in body
    assert SECRET not in str(body)


@pytest.mark.parametrize(("url", "shown"), [
    ("http://user:pa%40ss@vllm:8000/v1", "http://***@vllm:8000/v1"),
    ("http://token@vllm/v1", "http://***@vllm/v1"),
    ("https://vllm.example/v1?api_key=abc", "https://vllm.example/v1?***"),
    ("http://[::1]:8000/v1", "http://[::1]:8000/v1"),
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    ("http://vllm:notaport/v1", "***"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
