"""Why a job ended without a reply, as the API names it: one status and code per worker error.

The error middleware answers with these; the chat service stores them with a failed reply,
so a page loaded later shows the same words as the live answer did.
"""

from __future__ import annotations

from workers.errors import (
    ModelUnavailable,
    OwnerBlocked,
    QueueFull,
    ShuttingDown,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    WorkerError,
)


def failure_of(err: WorkerError) -> tuple[int, str, str, dict[str, str]]:
    """(HTTP status, code, message, headers) for a worker error."""
    message = str(err)
    if isinstance(err, QueueFull):
        if err.per_owner:
            return 429, "too_many_queued", message, {"Retry-After": "2"}
        return 503, "queue_full", message, {"Retry-After": "2"}
    if isinstance(err, ShuttingDown):
        return 503, "shutting_down", message, {"Retry-After": "5"}
    if isinstance(err, OwnerBlocked):
        return 403, "account_disabled", message, {}
    if isinstance(err, ModelUnavailable):
        return 503, "model_unavailable", message, {"Retry-After": "5"}
    if isinstance(err, UpstreamTimeout):
        return 504, "upstream_timeout", message, {}
    if isinstance(err, UpstreamRejected):  # a 400 is about the request (e.g. max_tokens)
        if err.status == 400:
            return 400, "upstream_rejected", err.detail or message, {}
        return 502, "upstream_rejected", message, {}
    if isinstance(err, UpstreamError):
        return 502, "upstream_unavailable", message, {}
    return 499, "cancelled", message, {}
