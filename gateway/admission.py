"""Bounded in-flight requests with a waiting room sized by expected wait, not by count.

A burst (``vllm bench serve`` sends all its requests at t=0) is not overload: every request that can be
served within ``queue_timeout`` waits its turn and is served. A request is shed with 503 + Retry-After
only when its expected wait (queue position / recent completion rate) is longer than the timeout, when it
has actually waited that long, or when the waiting room's hard cap (a memory guard) is reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from gateway.errors import GatewayError, Kind

# Completions within this window give the service rate; fewer than MIN_SAMPLES give no estimate yet.
RATE_WINDOW_SECONDS = 10.0
MIN_SAMPLES = 20
# In-flight bound while the rate is unknown, and its floor once known.
START_IN_FLIGHT = 64
MIN_IN_FLIGHT = 16


class Admission:
    """``max_in_flight`` caps the requests at Triton; with ``in_flight_seconds`` the bound follows the
    measured rate (rate x seconds: what Triton finishes in that time), so that a request's wait inside
    Triton stays under its queue timeout on a slow host and batches grow on a fast one."""

    def __init__(
        self, max_in_flight: int, max_waiting: int, queue_timeout: float, in_flight_seconds: float = 0.0
    ):
        self.max_in_flight = max_in_flight
        self.max_waiting = max_waiting
        self.queue_timeout = queue_timeout
        self.in_flight_seconds = in_flight_seconds
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._completions: deque[float] = deque()
        self._busy_since: float | None = None  # first admission since the gateway was last idle

    def limit(self) -> int:
        if not self.in_flight_seconds:
            return self.max_in_flight
        rate = self.rate()
        if rate is None:
            return min(self.max_in_flight, START_IN_FLIGHT)
        return max(
            min(MIN_IN_FLIGHT, self.max_in_flight),
            min(self.max_in_flight, int(rate * self.in_flight_seconds)),
        )

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def rate(self) -> float | None:
        """Requests completed per second over the recent window, or None before there is enough data."""
        now = time.monotonic()
        while self._completions and now - self._completions[0] > RATE_WINDOW_SECONDS:
            self._completions.popleft()
        if len(self._completions) < MIN_SAMPLES:
            return None
        # Batched requests finish in clumps: measure over the busy time, not from the first completion.
        busy = now - (self._busy_since if self._busy_since is not None else self._completions[0])
        return len(self._completions) / max(min(busy, RATE_WINDOW_SECONDS), 1e-3)

    def expected_wait(self) -> float | None:
        rate = self.rate()
        return None if rate is None else (self.waiting + 1) / rate

    def _shed(self, message: str, retry_after: float | None = None) -> GatewayError:
        seconds = math.ceil(retry_after) if retry_after else None
        return GatewayError(Kind.OVERLOADED, message, retry_after=seconds)

    @asynccontextmanager
    async def slot(self, deadline: float | None = None) -> AsyncIterator[None]:
        """An in-flight slot, waited for until ``deadline`` (time.monotonic; default: the queue timeout
        from now)."""
        await self._acquire(self.queue_timeout if deadline is None else deadline - time.monotonic())
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, timeout: float) -> None:
        if self.in_flight == 0 and not self._waiters:
            self._busy_since = time.monotonic()
        if self.in_flight < self.limit() and not self._waiters:
            self.in_flight += 1
            return
        if self.waiting >= self.max_waiting:
            raise self._shed(f"server overloaded: {self.waiting} requests already waiting")
        expected = self.expected_wait()
        if timeout <= 0:
            raise self._shed(
                f"server overloaded: no capacity within the queue timeout of {self.queue_timeout:g} s"
            )
        if expected is not None and expected > timeout:
            raise self._shed(
                f"server overloaded: expected wait {expected:.1f} s is over the queue timeout "
                f"of {self.queue_timeout:g} s",
                retry_after=expected - timeout,
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError) as error:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed over just as we gave up: pass it on.
                self._release(completed=False)
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if isinstance(error, asyncio.CancelledError):
                raise
            raise self._shed(
                f"server overloaded: no capacity within the queue timeout of {self.queue_timeout:g} s"
            ) from None

    def _release(self, completed: bool = True) -> None:
        if completed:
            self._completions.append(time.monotonic())
        self.in_flight -= 1
        # Slots pass straight to waiters (counted here, so that in_flight never overshoots), as many as
        # the bound allows now: it may have grown or shrunk since.
        limit = self.limit()
        while self._waiters and self.in_flight < limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self.in_flight += 1
