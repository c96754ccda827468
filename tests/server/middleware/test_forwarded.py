"""Proxy-header helpers: client_ip, is_https and own_origin, with and without trust."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict
from pytest_aiohttp import AiohttpClient, AiohttpServer

from server.middleware.forwarded import client_ip, is_https, own_origin

Client = TestClient[Any, Any]  # over an app or over a TLS TestServer


async def who(request: web.Request) -> web.Response:
    """What each helper says, trusting proxy headers when ?trust=1 (from ?hops= proxies)."""
    hops = int(request.query.get("hops", "1")) if request.query.get("trust") == "1" else 0
    return web.json_response({"ip": client_ip(request, hops), "https": is_https(request, hops),
                              "origin": own_origin(request, hops)})


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/who", who)
    return app


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(make_app())


Headers = dict[str, str] | list[tuple[str, str]]


async def ask(client: Client, trust: bool, headers: Headers | None = None,
              verify: bool = True, hops: int = 1) -> dict[str, Any]:
    resp = await client.get("/who", params={"trust": "1" if trust else "0", "hops": str(hops)},
                            headers=CIMultiDict(headers or {}), ssl=verify)
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    return body


PROXY = {"X-Forwarded-For": "203.0.113.7, 198.51.100.2", "X-Forwarded-Proto": "https",
         "X-Forwarded-Host": "chat.example"}


@pytest.mark.parametrize("trust", [False, True])
async def test_direct_request(client: Client, trust: bool) -> None:
    """No proxy headers: trust changes nothing."""
    assert await ask(client, trust) == {
        "ip": "127.0.0.1", "https": False,
        "origin": f"http://127.0.0.1:{client.server.port}"}


async def test_proxy_headers_ignored_without_trust(client: Client) -> None:
    assert await ask(client, False, PROXY) == {
        "ip": "127.0.0.1", "https": False,
        "origin": f"http://127.0.0.1:{client.server.port}"}


async def test_proxy_headers_honoured_with_trust(client: Client) -> None:
    assert await ask(client, True, PROXY) == {
        "ip": "198.51.100.2", "https": True, "origin": "https://chat.example"}


@pytest.mark.parametrize(("forwarded_for", "ip"), [
    ("203.0.113.7", "203.0.113.7"),
    ("  203.0.113.7  ", "203.0.113.7"),
    ("10.0.0.1,203.0.113.7", "203.0.113.7"),
    ("spoofed, 10.0.0.1 ,  203.0.113.7 ", "203.0.113.7"),
    ("2001:db8::1", "2001:db8::1"),
])
async def test_client_ip_is_the_last_hop(client: Client, forwarded_for: str, ip: str) -> None:
    """Only the hop the trusted proxy appended counts; earlier ones are client-supplied."""
    assert (await ask(client, True, {"X-Forwarded-For": forwarded_for}))["ip"] == ip


async def test_every_forwarded_for_line_counts(client: Client) -> None:
    """A proxy that adds its own header line (not appending to the client's) still wins:
    a client-supplied first line must not pick the address the rate limits key on."""
    lines = [("X-Forwarded-For", "203.0.113.66"), ("X-Forwarded-For", "198.51.100.2")]
    assert (await ask(client, True, lines))["ip"] == "198.51.100.2"
    lines = [("X-Forwarded-For", "203.0.113.66, 10.9.9.9"), ("X-Forwarded-For", "198.51.100.2")]
    assert (await ask(client, True, lines))["ip"] == "198.51.100.2"


@pytest.mark.parametrize(("forwarded_for", "hops", "ip"), [
    ("spoofed, 203.0.113.7, 10.0.0.2", 2, "203.0.113.7"),   # CDN then our proxy
    ("a, b, 203.0.113.7, 10.0.0.3, 10.0.0.2", 3, "203.0.113.7"),
    ("203.0.113.7", 2, "203.0.113.7"),                      # fewer entries than proxies
])
async def test_client_ip_behind_several_proxies(client: Client, forwarded_for: str, hops: int,
                                                ip: str) -> None:
    body = await ask(client, True, {"X-Forwarded-For": forwarded_for}, hops=hops)
    assert body["ip"] == ip


async def test_forwarded_proto_and_host_take_the_trusted_hop(client: Client) -> None:
    """A client's own X-Forwarded-Proto/Host line or list entry is not the proxy's."""
    spoof = [("X-Forwarded-Proto", "https"), ("X-Forwarded-Proto", "http"),
             ("X-Forwarded-Host", "evil.example"), ("X-Forwarded-Host", "chat.example")]
    body = await ask(client, True, spoof)
    assert body["https"] is False and body["origin"] == "http://chat.example"
    listed = {"X-Forwarded-Proto": "https, http", "X-Forwarded-Host": "chat.example, inner"}
    body = await ask(client, True, listed)
    assert body["https"] is False and body["origin"] == "http://inner"
    body = await ask(client, True, listed, hops=2)
    assert body["https"] is True and body["origin"] == "https://chat.example"


@pytest.mark.parametrize(("proto", "https"), [
    ("https", True), ("HTTPS", True), ("http", False), ("", False), ("wss", False),
])
async def test_is_https_from_trusted_proto(client: Client, proto: str, https: bool) -> None:
    body = await ask(client, True, {"X-Forwarded-Proto": proto})
    assert body["https"] is https
    scheme = "https" if https else "http"
    assert body["origin"] == f"{scheme}://127.0.0.1:{client.server.port}"


async def test_forwarded_host_alone_keeps_our_scheme(client: Client) -> None:
    body = await ask(client, True, {"X-Forwarded-Host": "chat.example:8443"})
    assert body["origin"] == "http://chat.example:8443"


async def test_host_header_defines_origin_without_proxy(client: Client) -> None:
    body = await ask(client, False, {"Host": "chat.example"})
    assert body["origin"] == "http://chat.example"


@pytest.mark.parametrize("trust", [False, True])
async def test_direct_https(aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient,
                            tls: ssl.SSLContext, trust: bool) -> None:
    """TLS to us is HTTPS whatever a proxy header claims."""
    client: Client = await aiohttp_client(await aiohttp_server(make_app(), ssl=tls))
    port = client.server.port
    assert await ask(client, trust, verify=False) == {
        "ip": "127.0.0.1", "https": True, "origin": f"https://127.0.0.1:{port}"}
    body = await ask(client, trust, {"X-Forwarded-Proto": "http"}, verify=False)
    assert body["https"] is True
