"""Who may start an upstream request now, beyond this process's own counts: the caps a
deployment shares (the workers, each replica's max_concurrency, one user's running and queued
jobs). `LocalLeases` is one process alone (today's caps, nothing more); a shared
implementation (Redis, in the server) is injected at start-up."""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

_ids = itertools.count(1)


@dataclass(eq=False)
class Ticket:
    """One job's claim on the shared caps, from its admission to its end."""

    owner: Hashable
    running_cap: int = 0  # most weight the owner's jobs may run at once (0 = no cap)
    weight: int = 1  # sequences asked of the model: what it counts against running_cap
    background: bool = False  # leaves the last place of a cap to a chat turn
    id: int = field(default_factory=lambda: next(_ids))  # unique in this process
    # Set by a shared lease that took the attempt's slot of the upstream rate with it: the
    # seconds to wait before sending (None: the pool's own pace decides).
    paced: float | None = None


# One replica as a lease sees it: its label (the same on every node) and its cap (0 = none).
Slot = tuple[str, int]


class Leases(Protocol):
    """The shared caps, asked by the pool at admission and by the router per attempt."""

    async def admit(self, ticket: Ticket, max_queued: int) -> bool:
        """Count a waiting job of the owner's; False when they already have `max_queued`
        waiting (0 = no cap) across the deployment: refuse it."""

    async def start(self, ticket: Ticket, slots: Sequence[Slot]) -> int | None:
        """Take a lease for one attempt on the first of `slots` (in order of preference) that
        has room, within the workers and the owner's running cap: its index. None after
        waiting a while for room (a release, or a short backoff): ask again. A lease that
        takes the attempt's upstream slot too sets `ticket.paced`."""

    def stop(self, ticket: Ticket) -> None:
        """The attempt ended: give back what it held."""

    def end(self, ticket: Ticket) -> None:
        """The job ended (ran, failed, cancelled or never queued): give back everything."""


class LocalLeases:
    """One process alone: the pool's and router's own counts are the caps, so every lease
    is granted at once (the first slot: the router chose it with room)."""

    async def admit(self, ticket: Ticket, max_queued: int) -> bool:
        """Always: the pool counted this process's waiting jobs already."""
        return True

    async def start(self, ticket: Ticket, slots: Sequence[Slot]) -> int | None:
        """The router's choice."""
        return 0

    def stop(self, ticket: Ticket) -> None:
        """Nothing held."""

    def end(self, ticket: Ticket) -> None:
        """Nothing held."""
