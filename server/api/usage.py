"""HTTP handler for /api/usage: the caller's tokens per day and in total."""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from .. import keys
from ..middleware.auth import principal_of
from ..middleware.errors import invalid
from .responses import json_response

MAX_DAYS = 366


def _day(request: web.Request, name: str) -> dt.date | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return dt.date.fromisoformat(raw)
    except ValueError as err:
        raise invalid(f"'{name}' must be a day as YYYY-MM-DD", name) from err


def _days_before(day: dt.date, days: int) -> dt.date:
    """`days` before `day`, or the first day there is (before 0001-01-30 there is none)."""
    return day - dt.timedelta(days=days) if day > dt.date.min + dt.timedelta(days=days) \
        else dt.date.min


async def usage(request: web.Request) -> web.Response:
    """Totals and per-day rows between `from` and `to` (default: the last 30 days)."""
    today = dt.datetime.now(dt.UTC).date()
    last = _day(request, "to") or today
    first = _day(request, "from") or _days_before(last, 29)
    if first > last or (last - first).days >= MAX_DAYS:
        raise invalid(f"'from' must be on or before 'to', at most {MAX_DAYS} days apart", "from")
    user_id = principal_of(request).user["id"]
    meter = request.app[keys.USAGE]
    rows = await meter.days(user_id, first.isoformat(), last.isoformat())
    totals = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    for row in rows:
        for name in totals:
            totals[name] += row[name]  # type: ignore[literal-required]
    return json_response({"from": first.isoformat(), "to": last.isoformat(), "totals": totals,
                          "days": rows, "month_tokens": await meter.month_used(user_id)})
