"""Fast JSON responses (orjson)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web


def dumps(data: Any) -> bytes:
    """Serialise to JSON bytes."""
    return orjson.dumps(data)


def json_response(data: Any, status: int = 200,
                  headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON response with the right content type."""
    return web.Response(body=orjson.dumps(data), status=status, headers=headers,
                        content_type="application/json")
