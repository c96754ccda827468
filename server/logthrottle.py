"""Log lines anyone can cause (bad cookies, malformed requests): at most one per interval."""

from __future__ import annotations

import logging
import time


class Throttle:
    """Lets one event per `interval_s` through and counts the ones it held back."""

    def __init__(self, interval_s: float) -> None:
        self._interval = interval_s
        self._next = 0.0
        self._held = 0

    def allow(self) -> int | None:
        """None: stay quiet; else how many were held back since the last one let through."""
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return None
        held, self._held = self._held, 0
        self._next = now + self._interval
        return held


class ThrottleFilter(logging.Filter):
    """On a library's logger: records starting with `prefix` pass once per interval, without
    a traceback, saying how many were held back; other records pass untouched."""

    def __init__(self, prefix: str, interval_s: float) -> None:
        super().__init__()
        self._prefix = prefix
        self._throttle = Throttle(interval_s)

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether the record is written (it is reworded when others were held back)."""
        if not str(record.msg).startswith(self._prefix):
            return True
        held = self._throttle.allow()
        if held is None:
            return False
        record.exc_info = None
        record.exc_text = None
        if held:
            record.msg = f"{record.getMessage()} ({held} more like it not logged)"
            record.args = None
        return True


LOG_INTERVAL_S = 60.0
_installed: set[str] = set()


def quieten_library_logs() -> None:
    """Throttle aiohttp_session's warning for each undecryptable cookie (once per process)."""
    if "aiohttp_session" in _installed:
        return
    _installed.add("aiohttp_session")
    logging.getLogger("aiohttp_session").addFilter(
        ThrottleFilter("Cannot decrypt cookie value", LOG_INTERVAL_S))
