"""perf.lib.loops: the drills' closed loops."""

from __future__ import annotations

import asyncio
import time

from perf.lib import loops


def test_each_index_runs_every_index_once_at_most_in_flight_at_a_time():
    seen: list[int] = []
    running, most = 0, 0

    async def one(index: int) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.001 * (index % 3))
        seen.append(index)
        running -= 1

    asyncio.run(loops.each_index(one, 50, 4))
    assert sorted(seen) == list(range(50)) and most == 4


def test_until_stops_starting_at_the_deadline():
    started: list[float] = []

    async def one() -> None:
        started.append(time.perf_counter())
        await asyncio.sleep(0.01)

    deadline = time.perf_counter() + 0.1
    asyncio.run(loops.until(one, deadline, 3))
    assert len(started) >= 3 and all(moment < deadline for moment in started)
