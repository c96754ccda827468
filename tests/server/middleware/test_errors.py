"""The error middleware alone: every failure becomes {"error": {"code", "message"}} JSON."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from server.middleware.errors import ApiError, from_domain, invalid, setup_errors
from server.services.accounts import RegistrationClosed, WrongCredentials, WrongPassword
from server.services.chat import ChatRejected
from server.services.passwords import PasswordsBusy
from server.services.ratelimit import RateLimited
from server.services.tokens import AuthError
from server.storage import Conflict, DatabaseBusy, DatabaseUnavailable, InvalidCursor, NotFound
from workers.errors import (
    JobCancelled,
    QueueFull,
    ShuttingDown,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
)

Client = TestClient[web.Request, web.Application]

# name -> (the error a handler raises, status, code, message, headers that must be present)
DOMAIN: dict[str, tuple[Callable[[], Exception], int, str, str, dict[str, str]]] = {
    "not-found": (lambda: NotFound("conversation not found"), 404, "not_found",
                  "conversation not found", {}),
    "not-found-bare": (lambda: NotFound(), 404, "not_found", "not found", {}),
    "cursor": (lambda: InvalidCursor("bad cursor"), 400, "invalid_request", "bad cursor", {}),
    "conflict": (lambda: Conflict("username is taken"), 409, "conflict", "username is taken", {}),
    "busy-db": (lambda: DatabaseBusy("locked"), 503, "database_busy", "locked",
                {"Retry-After": "1"}),
    "down-db": (lambda: DatabaseUnavailable("unreachable"), 503, "database_unavailable",
                "unreachable", {"Retry-After": "1"}),
    "limited": (lambda: RateLimited(2.5, "slow down"), 429, "rate_limited", "slow down",
                {"Retry-After": "3"}),
    "limited-short": (lambda: RateLimited(0.01, "slow down"), 429, "rate_limited", "slow down",
                      {"Retry-After": "1"}),
    "limited-whole": (lambda: RateLimited(4.0, "slow down"), 429, "rate_limited", "slow down",
                      {"Retry-After": "4"}),
    # Just past a whole second: rounded up, so a client that waits as told is not early.
    "limited-just-over": (lambda: RateLimited(4.0001, "slow down"), 429, "rate_limited",
                          "slow down", {"Retry-After": "5"}),
    "auth": (lambda: AuthError("invalid or expired token"), 401, "unauthorized",
             "invalid or expired token", {"WWW-Authenticate": "Bearer"}),
    "credentials": (lambda: WrongCredentials("wrong username or password"), 401, "unauthorized",
                    "wrong username or password", {"WWW-Authenticate": "Bearer"}),
    "password": (lambda: WrongPassword("wrong password"), 403, "wrong_password",
                 "wrong password", {}),
    "closed": (lambda: RegistrationClosed("closed"), 403, "registration_closed", "closed", {}),
    "hashing": (lambda: PasswordsBusy("busy"), 503, "busy", "busy", {"Retry-After": "1"}),
    "queue-full": (lambda: QueueFull("queue is full"), 503, "queue_full", "queue is full",
                   {"Retry-After": "2"}),
    "queue-owner": (lambda: QueueFull("too many", per_owner=True), 429, "too_many_queued",
                    "too many", {"Retry-After": "2"}),
    "stopping": (lambda: ShuttingDown("stopping"), 503, "shutting_down", "stopping",
                 {"Retry-After": "5"}),
    "upstream-timeout": (lambda: UpstreamTimeout("slow"), 504, "upstream_timeout", "slow", {}),
    "upstream-400": (lambda: UpstreamRejected("too long", 400), 400, "upstream_rejected",
                     "too long", {}),
    "upstream-422": (lambda: UpstreamRejected("odd", 422), 502, "upstream_rejected", "odd", {}),
    "upstream": (lambda: UpstreamError("down"), 502, "upstream_unavailable", "down", {}),
    "cancelled": (lambda: JobCancelled("gone"), 499, "cancelled", "gone", {}),
}


async def raise_api_error(request: web.Request) -> web.Response:
    raise ApiError(422, "too_odd", "that is odd", {"X-Hint": "try again"}, field="title")


async def raise_invalid(request: web.Request) -> web.Response:
    raise invalid("title is too long", "title")


async def raise_domain(request: web.Request) -> web.Response:
    raise DOMAIN[request.match_info["name"]][0]()


async def raise_chat_rejected(request: web.Request) -> web.Response:
    raise ChatRejected(QueueFull("queue is full"), conversation_id=7, user_message_id=9)


async def raise_unknown(request: web.Request) -> web.Response:
    raise RuntimeError("db password is hunter2")


async def raise_http(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    if kind == "redirect":
        raise web.HTTPFound("/elsewhere")
    if kind == "odd":
        raise web.HTTPUnprocessableEntity(reason="Odd Entity", headers={"X-Secret": "no"})
    raise web.HTTPTooManyRequests(headers={"Retry-After": "7", "X-Other": "dropped"})


async def upload(request: web.Request) -> web.Response:
    return web.json_response({"size": len(await request.read())})


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    """An app with only the error middleware and a body limit of 1 KiB."""
    app = web.Application(client_max_size=1024)
    setup_errors(app)
    app.router.add_get("/api/error", raise_api_error)
    app.router.add_get("/api/invalid", raise_invalid)
    app.router.add_get("/api/domain/{name}", raise_domain)
    app.router.add_get("/api/chat-rejected", raise_chat_rejected)
    app.router.add_get("/api/unknown", raise_unknown)
    app.router.add_get("/api/http/{kind}", raise_http)
    app.router.add_post("/api/upload", upload)
    app.router.add_get("/api/ok", ok)
    return await aiohttp_client(app)


async def error_body(resp: Any, status: int, code: str) -> dict[str, Any]:
    """Assert a JSON error with this status and code; return its error object."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


async def test_success_passes_through(client: Client) -> None:
    """A handler's own response is not touched."""
    resp = await client.get("/api/ok")
    assert resp.status == 200
    assert await resp.json() == {"ok": True}


async def test_api_error_becomes_json_with_its_headers_and_extras(client: Client) -> None:
    resp = await client.get("/api/error")
    error = await error_body(resp, 422, "too_odd")
    assert error == {"code": "too_odd", "message": "that is odd", "field": "title"}
    assert resp.headers["X-Hint"] == "try again"


async def test_invalid_names_the_field(client: Client) -> None:
    error = await error_body(await client.get("/api/invalid"), 400, "invalid_request")
    assert error == {"code": "invalid_request", "message": "title is too long", "field": "title"}


async def test_unmatched_route_is_json_404(client: Client) -> None:
    resp = await client.get("/api/nowhere")
    error = await error_body(resp, 404, "not_found")
    assert error["message"] == "Not Found"


async def test_wrong_method_is_json_405_with_allow(client: Client) -> None:
    resp = await client.delete("/api/ok")
    error = await error_body(resp, 405, "method_not_allowed")
    assert error["message"] == "Method Not Allowed"
    assert set(resp.headers["Allow"].split(",")) == {"GET", "HEAD"}


async def test_body_too_large_is_json_413(client: Client) -> None:
    resp = await client.post("/api/upload", data=b"x" * 2048)
    error = await error_body(resp, 413, "payload_too_large")
    assert error["message"] == "request body is too large"


async def test_body_within_limit_is_accepted(client: Client) -> None:
    resp = await client.post("/api/upload", data=b"x" * 1000)
    assert resp.status == 200
    assert await resp.json() == {"size": 1000}


async def test_http_exception_keeps_only_allow_and_retry_after(client: Client) -> None:
    resp = await client.get("/api/http/limited")
    error = await error_body(resp, 429, "rate_limited")
    assert error["message"] == "Too Many Requests"
    assert resp.headers["Retry-After"] == "7"
    assert "X-Other" not in resp.headers


async def test_unknown_http_status_gets_generic_code(client: Client) -> None:
    resp = await client.get("/api/http/odd")
    error = await error_body(resp, 422, "error")
    assert error["message"] == "Odd Entity"
    assert "X-Secret" not in resp.headers


async def test_redirects_are_not_errors(client: Client) -> None:
    resp = await client.get("/api/http/redirect", allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "/elsewhere"


async def test_unknown_exception_is_json_500_without_details(
        client: Client, caplog: pytest.LogCaptureFixture) -> None:
    """The body says nothing about the failure; the log has the traceback."""
    with caplog.at_level(logging.ERROR, logger="server.middleware.errors"):
        resp = await client.get("/api/unknown")
        text = await resp.text()
    error = await error_body(resp, 500, "internal_error")
    assert error == {"code": "internal_error", "message": "internal server error"}
    assert "hunter2" not in text and "Traceback" not in text and "RuntimeError" not in text
    assert any(r.exc_info and "GET /api/unknown" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("name", sorted(DOMAIN))
async def test_domain_error_is_mapped(client: Client, name: str) -> None:
    _, status, code, message, headers = DOMAIN[name]
    resp = await client.get(f"/api/domain/{name}")
    error = await error_body(resp, status, code)
    assert error["message"] == message
    for header, value in headers.items():
        assert resp.headers[header] == value
    if "Retry-After" not in headers:
        assert "Retry-After" not in resp.headers


async def test_invalid_cursor_names_its_field(client: Client) -> None:
    error = await error_body(await client.get("/api/domain/cursor"), 400, "invalid_request")
    assert error == {"code": "invalid_request", "message": "bad cursor", "field": "cursor"}


async def test_chat_rejected_maps_its_cause_and_names_the_stored_message(client: Client) -> None:
    error = await error_body(await client.get("/api/chat-rejected"), 503, "queue_full")
    assert error == {"code": "queue_full", "message": "queue is full",
                     "conversation_id": 7, "user_message_id": 9}


def test_from_domain_knows_nothing_of_other_errors() -> None:
    assert from_domain(ValueError("nope")) is None
    assert from_domain(KeyError("k")) is None


def test_api_error_body_shape() -> None:
    err = ApiError(409, "conflict", "taken", extra_field=1)
    assert err.body() == {"error": {"code": "conflict", "message": "taken", "extra_field": 1}}
    assert err.response().status == 409
