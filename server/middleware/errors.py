"""API errors and the one place where domain errors become HTTP errors."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping

import orjson
from aiohttp import web

from workers.errors import (
    ModelNotFound,
    WorkerError,
)

from .. import keys
from ..services.accounts import (
    NotSignedIn,
    RegistrationClosed,
    SamePassword,
    WrongCredentials,
    WrongPassword,
)
from ..services.admin import AdminConflict, InvalidAdminRequest
from ..services.caps import ConversationsTooFast
from ..services.chat import ChatRejected, TurnRunning
from ..services.failures import failure_of
from ..services.gate import AccountDisabled, AccountPending, Forbidden, PasswordChangeRequired
from ..services.memories import InvalidMemory
from ..services.password_policy import WeakPassword
from ..services.passwords import PasswordsBusy
from ..services.ratelimit import RateLimited
from ..services.registry import TurnNotFound
from ..services.sharing import TurnUnavailable
from ..services.tokens import AuthError
from ..services.transfer import ImportUnreadable
from ..services.usage import QuotaExceeded
from ..storage import (
    Conflict,
    DatabaseBusy,
    DatabaseUnavailable,
    InvalidCursor,
    MemoryNotFound,
    NotFound,
    StorageQuotaExceeded,
    TooManyConversations,
    TooManyKeys,
    TooManyMemories,
)

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
    415: "unsupported_media_type", 429: "rate_limited", 431: "headers_too_large",
    502: "upstream_unavailable", 503: "unavailable", 504: "upstream_timeout",
}


# OpenAI's error types, for the /v1 front door (everything else is invalid_request_error or
# server_error by status).
_OPENAI_TYPES = {
    "rate_limited": "requests", "quota_exceeded": "insufficient_quota",
    "unauthorized": "invalid_request_error", "model_not_found": "invalid_request_error",
}


class ApiError(Exception):
    """An error with its HTTP status, machine code and human message."""

    def __init__(self, status: int, code: str, message: str,
                 headers: Mapping[str, str] | None = None, **extra: object) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra

    def body(self) -> dict[str, object]:
        """The JSON error object, as responses and SSE error events carry it."""
        return {"error": {"code": self.code, "message": self.message, **self.extra}}

    def openai_body(self) -> dict[str, object]:
        """The same error in OpenAI's shape, for /v1: {"error": {message, type, param, code}}."""
        kind = _OPENAI_TYPES.get(self.code) or ("server_error" if self.status >= 500
                                                else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind,
                          "param": self.extra.get("field"), "code": self.code}}

    def response(self, openai: bool = False) -> web.Response:
        """The JSON response for this error (OpenAI's shape when `openai`)."""
        body = self.openai_body() if openai else self.body()
        return web.Response(body=orjson.dumps(body), status=self.status,
                            headers=self.headers, content_type="application/json")


def invalid(message: str, field: str | None = None) -> ApiError:
    """400 for a malformed request, naming the field when there is one."""
    if field:
        return ApiError(400, "invalid_request", message, field=field)
    return ApiError(400, "invalid_request", message)


def unauthorized(message: str = "authentication required") -> ApiError:
    """401 with the bearer challenge."""
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})


def rate_limited(retry_after: float, message: str = "too many requests",
                 code: str = "rate_limited", **extra: object) -> ApiError:
    """429 with Retry-After in whole seconds, rounded up: never 0 (or early) while limited."""
    seconds = max(1, math.ceil(retry_after))
    return ApiError(429, code, message, {"Retry-After": str(seconds)}, **extra)


def from_domain(err: BaseException) -> ApiError | None:
    """Map a domain error (storage, service, worker) to its API error, or None if unknown."""
    if isinstance(err, ChatRejected):
        mapped = from_domain(err.cause)
        if mapped is not None:
            mapped.extra.update(conversation_id=err.conversation_id,
                                user_message_id=err.user_message_id)
        return mapped
    if isinstance(err, TurnRunning):
        return ApiError(409, "turn_running", str(err))
    if isinstance(err, TurnNotFound):
        return ApiError(404, "turn_not_found", str(err))
    if isinstance(err, TurnUnavailable):
        return ApiError(503, "turn_unavailable", str(err), {"Retry-After": "1"})
    if isinstance(err, ConversationsTooFast):
        return rate_limited(err.retry_after, str(err), "too_many_conversations",
                            limit="conversations_per_user_per_minute")
    if isinstance(err, RateLimited):
        return rate_limited(err.retry_after, str(err))
    if isinstance(err, TooManyConversations):
        return ApiError(429, "too_many_conversations", str(err),
                        limit="max_conversations_per_user")
    if isinstance(err, TooManyKeys):
        return ApiError(429, "too_many_keys", str(err), limit="max_api_keys_per_user")
    if isinstance(err, TooManyMemories):
        return ApiError(429, "too_many_memories", str(err), limit="memories.max_per_user")
    if isinstance(err, StorageQuotaExceeded):
        return ApiError(413, "storage_quota_exceeded", str(err),
                        limit="max_stored_chars_per_user")
    if isinstance(err, (AuthError, WrongCredentials)):
        return unauthorized(str(err))
    if isinstance(err, WrongPassword):
        return ApiError(403, "wrong_password", str(err))
    if isinstance(err, WeakPassword):
        return ApiError(400, "weak_password", str(err), field=err.field)
    if isinstance(err, RegistrationClosed):
        return ApiError(403, "registration_closed", str(err))
    mapped = _from_gate(err)
    if mapped is not None:
        return mapped
    if isinstance(err, ImportUnreadable):
        return ApiError(400, "unknown_import_format", str(err))
    if isinstance(err, NotSignedIn):
        return invalid(str(err))
    if isinstance(err, InvalidMemory):
        return invalid(str(err), "content")
    if isinstance(err, MemoryNotFound):
        return ApiError(404, "memory_not_found", str(err))
    if isinstance(err, ModelNotFound):
        return ApiError(404, "model_not_found", str(err), field="model")
    if isinstance(err, QuotaExceeded):
        return ApiError(429, "quota_exceeded", str(err))
    if isinstance(err, PasswordsBusy):
        return ApiError(503, "busy", str(err), {"Retry-After": "1"})
    if isinstance(err, WorkerError):
        return _from_worker(err)
    if isinstance(err, NotFound):
        return ApiError(404, "not_found", str(err) or "not found")
    if isinstance(err, Conflict):
        return ApiError(409, "conflict", str(err))
    if isinstance(err, InvalidCursor):
        return invalid(str(err), "cursor")
    if isinstance(err, DatabaseUnavailable):
        return ApiError(503, "database_unavailable", str(err), {"Retry-After": "1"})
    if isinstance(err, DatabaseBusy):
        return ApiError(503, "database_busy", str(err), {"Retry-After": "1"})
    return None


def _from_gate(err: BaseException) -> ApiError | None:
    """Account status, the admin role and admin requests."""
    if isinstance(err, AccountDisabled):
        return ApiError(403, "account_disabled", str(err))
    if isinstance(err, AccountPending):
        return ApiError(403, "account_pending", str(err))
    if isinstance(err, PasswordChangeRequired):
        return ApiError(403, "password_change_required", str(err))
    if isinstance(err, Forbidden):
        return ApiError(403, "forbidden", str(err))
    if isinstance(err, InvalidAdminRequest):
        return invalid(str(err), err.field)
    if isinstance(err, AdminConflict):
        return ApiError(409, "conflict", str(err))
    if isinstance(err, SamePassword):
        return invalid(str(err), "new_password")
    return None


def _from_worker(err: WorkerError) -> ApiError:
    status, code, message, headers = failure_of(err)
    return ApiError(status, code, message, headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON error; never a traceback or an HTML page."""
    openai = request.path.startswith("/v1/")
    try:
        return await handler(request)
    except ApiError as err:
        return _refused(request, err).response(openai)
    except web.HTTPException as err:
        if err.status < 400:
            raise
        code = _HTTP_CODES.get(err.status, "error")
        message = err.reason if err.status != 413 else "request body is too large"
        headers = {k: v for k, v in err.headers.items() if k in ("Allow", "Retry-After")}
        return ApiError(err.status, code, message, headers).response(openai)
    except Exception as err:
        mapped = from_domain(err)
        if mapped is not None:
            return _refused(request, mapped).response(openai)
        log.exception("unhandled error on %s %s", request.method, request.path)
        return ApiError(500, "internal_error", "internal server error").response(openai)


_REFUSALS = frozenset({"rate_limited", "too_many_queued", "queue_full", "quota_exceeded",
                       "too_many_conversations", "storage_quota_exceeded", "busy",
                       "shutting_down", "model_unavailable"})


def _refused(request: web.Request, err: ApiError) -> ApiError:
    """Count refusals for overload or limits (a fixed word per reason, for /metrics)."""
    metrics = request.app.get(keys.METRICS)
    if metrics is not None and err.code in _REFUSALS:
        metrics.rejections.inc(err.code)
    return err


def setup_errors(app: web.Application) -> None:
    """Install the error middleware (outermost, so it sees every other failure)."""
    app.middlewares.append(error_middleware)
