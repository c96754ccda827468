"""Writing off the event loop: items are kept in memory and a thread hands them on in
batches, so the loop never waits on a slow stream and no thread is woken per item (that
costs a GIL hand-off each). The access log and the process's log records both use it."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class BatchWriter(Generic[T]):
    """Items added on the loop; a thread calls `write(batch)` every `interval_s`."""

    def __init__(self, write: Callable[[list[T]], None], name: str,
                 interval_s: float = 0.1) -> None:
        self._write = write
        self._name = name
        self._interval = interval_s
        self._pending: deque[T] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, item: T) -> None:
        """One item (an atomic append: no lock)."""
        self._pending.append(item)

    def start(self) -> None:
        """Start the writer thread."""
        self._thread = threading.Thread(target=self._write_forever, name=self._name,
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, then write what is still pending."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()

    def flush(self) -> None:
        """Hand every pending item to `write` at once."""
        batch = []
        while self._pending:
            batch.append(self._pending.popleft())
        if batch:
            self._write(batch)

    def _write_forever(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.flush()
            except (OSError, ValueError):  # a closed or broken stream must not kill the thread
                pass
