"""The drills' closed loops: ``in_flight`` coroutines, each sending its next request as soon as its last is
answered, over a fixed number of requests or until a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def each_index(one: Callable[[int], Awaitable[None]], total: int, in_flight: int) -> None:
    """``one(index)`` for every index below ``total``, each once, ``in_flight`` at a time."""
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < total:
            index = next_index
            next_index += 1
            await one(index)

    await asyncio.gather(*(worker() for _ in range(in_flight)))


async def until(one: Callable[[], Awaitable[None]], deadline: float, in_flight: int) -> None:
    """``one()`` again and again, ``in_flight`` at a time, until ``time.perf_counter()`` passes ``deadline``
    (what is in flight then is awaited)."""

    async def worker() -> None:
        while time.perf_counter() < deadline:
            await one()

    await asyncio.gather(*(worker() for _ in range(in_flight)))
