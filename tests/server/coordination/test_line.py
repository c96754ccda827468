"""A node's line of workers waiting for a shared lease: who is tried first, and when a round
stops."""

from __future__ import annotations

import asyncio

from server.coordination.line import Line, Order


async def _waiter(line: Line, order: Order, woken: list[Order],
                  refuse: dict[Order, bool]) -> None:
    """Wait for a turn, note it, answer the round as `refuse` says (True: the shared cap is
    full; False: refused for its own reasons; absent: granted)."""
    await line.wait(order)
    woken.append(order)
    line.tried(refuse.get(order, False))


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_turns_go_before_background_jobs_then_first_come() -> None:
    line = Line(backoff_s=60)
    woken: list[Order] = []
    orders: list[Order] = [(True, 1), (False, 3), (False, 2), (True, 0)]
    tasks = [asyncio.create_task(_waiter(line, o, woken, {})) for o in orders]
    await _settle()
    line.notify()
    await asyncio.gather(*tasks)
    assert woken == [(False, 2), (False, 3), (True, 0), (True, 1)]
    line.close()


async def test_a_round_stops_at_the_first_refused_for_want_of_a_shared_place() -> None:
    line = Line(backoff_s=60)
    woken: list[Order] = []
    # The first is refused for its own user's cap (the round goes on), the second because
    # the deployment's workers are full (nobody after it is asked).
    refuse = {(False, 1): False, (False, 2): True}
    tasks = [asyncio.create_task(_waiter(line, (False, i), woken, refuse)) for i in (1, 2, 3)]
    await _settle()
    line.notify()
    await _settle()
    assert woken == [(False, 1), (False, 2)]
    assert not tasks[2].done()
    line.notify()  # room made again: the one left is asked
    await asyncio.wait_for(tasks[2], 5)
    assert woken[-1] == (False, 3)
    line.close()


async def test_a_waiter_stopped_during_its_turn_does_not_stall_the_round() -> None:
    line = Line(backoff_s=60)
    woken: list[Order] = []
    first = asyncio.create_task(line.wait((False, 1)))
    second = asyncio.create_task(_waiter(line, (False, 2), woken, {}))
    await _settle()
    line.notify()  # the first's turn comes...
    first.cancel()  # ...as its job is stopped
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.wait_for(second, 5)
    assert woken == [(False, 2)]
    line.close()


async def test_the_line_looks_again_every_backoff_while_anyone_waits() -> None:
    line = Line(backoff_s=0.05)  # a dead node's leases expire unannounced
    woken: list[Order] = []
    await asyncio.wait_for(_waiter(line, (False, 1), woken, {}), 5)
    assert woken == [(False, 1)]
    line.close()
