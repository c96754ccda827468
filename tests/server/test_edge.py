"""The network edge against the real app: proxy hops, CORS on streams, headers, quiet logs."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import orjson
from multidict import CIMultiDict

from server.runner import Running, start
from tests.support.app import make_config, register_over_http


async def test_login_limit_keys_on_the_proxys_own_forwarded_line(tmp_path: Path,
                                                                 simulator) -> None:
    """A proxy that adds its own X-Forwarded-For line: the client's extra line changes nothing,
    so guessing passwords from one address is still limited."""
    running = await start(make_config(tmp_path, simulator.url, server={"trust_forwarded": True},
                                      limits={"login_per_ip_per_minute": 3}))
    try:
        async with aiohttp.ClientSession(running.url) as s:
            statuses = []
            for i in range(4):
                headers = CIMultiDict([("X-Forwarded-For", f"10.0.0.{i}"),
                                       ("X-Forwarded-For", "192.0.2.7")])
                async with s.post("/api/auth/login",
                                  json={"username": "victim", "password": f"guess-number-{i}"},
                                  headers=headers) as r:
                    statuses.append(r.status)
            assert statuses == [401, 401, 401, 429]
    finally:
        await running.stop()


async def test_trusted_proxy_hops_pick_the_outer_proxys_entry(tmp_path: Path,
                                                              simulator) -> None:
    """Two proxies (CDN, then ours): the client is the CDN's entry, not our proxy's."""
    running = await start(make_config(tmp_path, simulator.url,
                                      server={"trusted_proxy_hops": 2},
                                      limits={"login_per_ip_per_minute": 2}))
    try:
        async with aiohttp.ClientSession(running.url) as s:
            async def attempt(spoof: str, client: str) -> int:
                forwarded = f"{spoof}, {client}, 10.0.0.2"
                async with s.post("/api/auth/login",
                                  json={"username": "victim", "password": "guess-number"},
                                  headers={"X-Forwarded-For": forwarded}) as r:
                    return r.status
            assert [await attempt(f"1.1.1.{i}", "203.0.113.9") for i in range(3)] \
                == [401, 401, 429]
            assert await attempt("1.1.1.1", "203.0.113.10") == 401  # another client
    finally:
        await running.stop()


async def test_streamed_chat_carries_cors_headers(tmp_path: Path, simulator) -> None:
    """The SSE answer's headers leave before the handler returns: a listed origin gets them."""
    origin = "https://app.example"
    running = await start(make_config(tmp_path, simulator.url,
                                      server={"cors_origins": [origin]}))
    try:
        user = await register_over_http(running.url, "streamer")
        async with aiohttp.ClientSession(running.url) as s:
            async with s.post("/api/chat", json={"message": "hi", "stream": True},
                              headers={**user.headers, "Origin": origin}) as r:
                assert r.status == 200 and r.content_type == "text/event-stream"
                await r.read()
                assert r.headers["Access-Control-Allow-Origin"] == origin
                assert r.headers["Access-Control-Allow-Credentials"] == "true"
                assert "X-Request-Id" in r.headers["Access-Control-Expose-Headers"]
                assert "Origin" in r.headers["Vary"]
    finally:
        await running.stop()


async def _raw(url: str, data: bytes) -> bytes:
    """Send bytes on a fresh connection; everything the server answers before closing."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


async def test_server_header_names_no_versions(server: Running) -> None:
    async with aiohttp.ClientSession(server.url) as s:
        for path in ("/health", "/api/conversations", "/nowhere"):
            async with s.get(path) as r:
                assert r.headers["Server"] == "chatgate"


async def test_malformed_requests_get_json_and_few_log_lines(server: Running, caplog) -> None:
    """Anyone can send garbage: each gets our JSON error; the log gets one line a minute at
    most and never a traceback."""
    caplog.set_level(logging.DEBUG)
    for i in range(20):
        answer = await _raw(server.url, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header %d\r\n\r\n" % i)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.") and b" 400 " in head.split(b"\r\n")[0]
        assert b"Server: chatgate" in head and b"aiohttp" not in head
        assert orjson.loads(body) == {"error": {"code": "bad_request",
                                                "message": "malformed HTTP request"}}
    answer = await _raw(server.url, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n")
    assert b" 431 " in answer.split(b"\r\n")[0] and b'"headers_too_large"' in answer
    noisy = [r for r in caplog.records if r.name.startswith(("aiohttp", "server.listener"))
             and r.levelno >= logging.INFO]
    assert len(noisy) <= 1 and not any(r.exc_info for r in noisy)


async def test_undecryptable_cookies_log_at_most_a_line(server: Running, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    async with aiohttp.ClientSession(server.url) as s:
        for i in range(20):
            async with s.get("/api/conversations",
                             headers={"Cookie": f"chatgate_session=forged{i}"}) as r:
                assert r.status == 401
    assert len([r for r in caplog.records if r.name == "aiohttp_session"]) <= 1
