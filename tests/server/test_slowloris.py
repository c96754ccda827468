"""Slow and idle connections against run.py over real sockets: bounded in time and number."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.support.app import register_over_http
from tests.support.procs import Proc, start_server_process

GENEROUS = 60.0  # long enough for a loaded machine; the deadlines under test are 2 s


@pytest.fixture
async def edge(tmp_path: Path, simulator) -> AsyncIterator[Proc]:
    """run.py with short header and body deadlines."""
    proc = await start_server_process(tmp_path / "edge.db", simulator.url,
                                      server__header_timeout_s=2, server__body_timeout_s=2,
                                      server__keepalive_timeout_s=30)
    yield proc
    await proc.stop()


async def _connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def _drip(writer: asyncio.StreamWriter, data: bytes, every_s: float) -> None:
    """Send one byte at a time, forever (or until the server hangs up)."""
    with contextlib.suppress(ConnectionError):
        for i in range(10**6):
            writer.write(data[i % len(data):i % len(data) + 1])
            await writer.drain()
            await asyncio.sleep(every_s)


async def _closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """What the server sent before closing; fails if it keeps the connection open."""
    try:
        return await asyncio.wait_for(reader.read(), GENEROUS)
    except ConnectionError:
        return b""


async def test_idle_connection_is_closed(edge: Proc) -> None:
    reader, writer = await _connect(edge.url)
    try:
        assert await _closed_by_server(reader) == b""
    finally:
        writer.close()


async def test_dripping_headers_are_cut_off(edge: Proc) -> None:
    """A request whose headers never end (a byte every 0.2 s) loses its connection."""
    reader, writer = await _connect(edge.url)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    drip = asyncio.create_task(_drip(writer, b"X-Slow: aaaa\r\n", 0.2))
    try:
        await _closed_by_server(reader)
    finally:
        drip.cancel()
        writer.close()


async def _answer(reader: asyncio.StreamReader) -> bytes:
    """One whole answer to a GET /health (its headers and its short JSON body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GENEROUS)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head + await asyncio.wait_for(reader.readexactly(length), GENEROUS)


HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_idle_keepalive_outlives_the_header_deadline(edge: Proc) -> None:
    """Between requests a connection may idle (server.keepalive_timeout_s, here 30 s): the
    header deadline (2 s) starts only with the next request's first byte."""
    reader, writer = await _connect(edge.url)
    try:
        writer.write(HEALTH)
        assert b" 200 " in await _answer(reader)
        await asyncio.sleep(3)
        writer.write(HEALTH)
        assert b" 200 " in await _answer(reader)
    finally:
        writer.close()


async def test_dripping_the_next_request_is_cut_off(edge: Proc) -> None:
    """A kept-alive connection dripping its second request's headers loses the connection."""
    reader, writer = await _connect(edge.url)
    writer.write(HEALTH)
    assert b" 200 " in await _answer(reader)
    writer.write(b"GET /health HTTP/1.1\r\n")
    drip = asyncio.create_task(_drip(writer, b"X-Slow: aaaa\r\n", 0.2))
    try:
        assert await _closed_by_server(reader) == b""
    finally:
        drip.cancel()
        writer.close()


async def test_dripping_body_gets_408_and_is_closed(edge: Proc) -> None:
    reader, writer = await _connect(edge.url)
    writer.write(b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
    drip = asyncio.create_task(_drip(writer, b" ", 0.2))
    try:
        answer = await _closed_by_server(reader)
    finally:
        drip.cancel()
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split(b" ")[1] == b"408"
    assert orjson.loads(body)["error"]["code"] == "request_timeout"


async def test_dripping_import_body_gets_408_and_is_closed(edge: Proc) -> None:
    """An import reads its own (larger) body, under the same deadline."""
    user = await register_over_http(edge.url, "dripper")
    reader, writer = await _connect(edge.url)
    writer.write(b"POST /api/conversations/import HTTP/1.1\r\nHost: x\r\n"
                 b"Authorization: Bearer " + user.token.encode() + b"\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n[")
    drip = asyncio.create_task(_drip(writer, b" ", 0.2))
    try:
        answer = await _closed_by_server(reader)
    finally:
        drip.cancel()
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split(b" ")[1] == b"408"
    assert orjson.loads(body)["error"]["code"] == "request_timeout"


async def test_an_unauthenticated_body_is_never_waited_for(edge: Proc) -> None:
    """A guarded route answers 401 at once, without waiting for (or buffering) a body that
    is still coming: only the public routes read a body before authentication."""
    reader, writer = await _connect(edge.url)
    writer.write(b"POST /api/conversations HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
    drip = asyncio.create_task(_drip(writer, b" ", 0.2))
    try:
        head = (await _answer(reader)).split(b"\r\n")[0]
    finally:
        drip.cancel()
        writer.close()
    assert head.split(b" ")[1] == b"401"


async def test_server_answers_during_a_slowloris_attack(tmp_path: Path, simulator) -> None:
    """250 connections dripping headers: a normal client still gets its answers."""
    proc = await start_server_process(tmp_path / "edge.db", simulator.url)
    conns: list[asyncio.StreamWriter] = []
    drips: list[asyncio.Task[None]] = []
    try:
        for _ in range(250):
            _, writer = await _connect(proc.url)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
            conns.append(writer)
            drips.append(asyncio.create_task(_drip(writer, b"X-Slow: a\r\n", 1.0)))
        async with aiohttp.ClientSession(proc.url) as s:
            for path in ("/health", "/ready"):
                async with s.get(path, timeout=aiohttp.ClientTimeout(total=GENEROUS)) as r:
                    assert r.status == 200
            async with s.post("/api/auth/register",
                              json={"username": "during", "password": "quiet-lantern-42"},
                              timeout=aiohttp.ClientTimeout(total=GENEROUS)) as r:
                assert r.status == 201
    finally:
        for task in drips:
            task.cancel()
        for writer in conns:
            writer.close()
        await proc.stop()


async def test_connections_over_the_cap_are_refused(tmp_path: Path, simulator) -> None:
    """Past server.max_connections a new connection gets 503 at once; room again once the
    others close."""
    proc = await start_server_process(tmp_path / "edge.db", simulator.url,
                                      server__max_connections=20)
    held: list[asyncio.StreamWriter] = []
    try:
        for _ in range(20):
            _, writer = await _connect(proc.url)
            held.append(writer)
        await asyncio.sleep(0.2)  # let the server accept them all
        reader, writer = await _connect(proc.url)
        answer = await _closed_by_server(reader)
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b"\r\n")[0].split(b" ")[1] == b"503" and b"Retry-After: 1" in head
        assert orjson.loads(body)["error"]["code"] == "too_many_connections"
        async with aiohttp.ClientSession(proc.url) as s:  # a client that sends its request
            async with s.get("/health") as r:
                assert r.status == 503 and r.headers["Retry-After"] == "1"
                assert (await r.json())["error"]["code"] == "too_many_connections"
        for writer in held:
            writer.close()
        held.clear()
        async with aiohttp.ClientSession(proc.url) as s:
            for _ in range(GENEROUS_TRIES):  # the server notices the closes in its own time
                async with s.get("/health") as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("still refused after the held connections closed")
    finally:
        for writer in held:
            writer.close()
        await proc.stop()


GENEROUS_TRIES = 600
