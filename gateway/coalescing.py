"""Batch while busy: requests that would only wait behind earlier Triton calls are merged into one call.

Each Triton request costs the server per request (gRPC, the ensemble, one Python-backend request per step)
whatever its rows, so many one-row requests cost it more than one request of many rows: on 2 cores at
concurrency 16, 9.1 CPU ms per row through the gateway against 8.1 from perf_analyzer, whose requests
Triton's batcher met in bigger groups. A ``Coalescer`` keeps at most ``max_calls`` calls in flight. A
request that finds none goes at once, on its own, awaited in place (no delay at low load). One that finds
some but not ``max_calls`` goes on the next turn of the event loop, with whatever arrived in the same turn
(requests answered together come back together). What arrives while all are busy queues, and each call
that finishes sends everything queued (up to ``max_rows``, and up to ``max_cost`` by ``cost``: an estimate
of the rows' tokens) as one call. Answers are split back per request.

The cost cap keeps one merged call short: 64 rows of 3,000 tokens are tens of seconds of work on a small
host, and every request merged into it or queued behind it waits that long, past the steps' queue timeout,
to be refused late. A part that alone is over the cap still goes, alone.

Errors stay per request. ``judge`` says whom a failed call's error concerns: one row (that row's request
gets ``RowRejected`` naming the row in its own numbering, the others go again without it, first in line),
every row (Triton down, overloaded, timed out: every request gets the error and retries as it would
alone), or an unknown row (each request is sent again alone, so that the error reaches only its owner).
A caller that goes away (client disconnect) is dropped from the queue; a merged call it was part of goes
on for the others.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

Row = TypeVar("Row")
Answer = TypeVar("Answer")


class Blame(enum.Enum):
    ALL = "all"  # the error is every row's: each request gets it
    UNKNOWN = "unknown"  # one row's, but which is not said: each request goes again alone


class RowRejected(Exception):
    """A merged call failed because of the caller's row ``row`` (numbered within the caller's rows)."""

    def __init__(self, error: Exception, row: int):
        super().__init__(str(error))
        self.error = error
        self.row = row


@dataclass(eq=False)
class _Part(Generic[Row, Answer]):
    """One caller's rows waiting for a call, and where their answers go."""

    rows: Sequence[Row]
    future: asyncio.Future[list[Answer]]
    cost: int = 0


class Coalescer(Generic[Row, Answer]):
    """``send(rows)`` makes one call and returns one answer per row, in order; ``judge(error)`` says which
    row a failed call's error concerns (an index into the rows sent) or a ``Blame``."""

    def __init__(
        self,
        send: Callable[[list[Row]], Awaitable[list[Answer]]],
        judge: Callable[[Exception], int | Blame],
        max_rows: int,
        max_calls: int,
        cost: Callable[[Row], int] | None = None,
        max_cost: int = 0,
    ):
        if max_rows < 1 or max_calls < 1:
            raise ValueError(f"max_rows and max_calls must be at least 1, got {max_rows} and {max_calls}")
        self.send = send
        self.judge = judge
        self.max_rows = max_rows
        self.max_calls = max_calls
        self.cost = cost
        self.max_cost = max_cost  # 0 (or no ``cost``): rows alone bound a merged call
        self.calls = 0
        self._queue: deque[_Part[Row, Answer]] = deque()
        self._soon = False  # a dispatch is scheduled for the loop's next turn
        self._tasks: set[asyncio.Task[None]] = set()  # merged calls, referenced until done

    @property
    def waiting(self) -> int:
        return sum(1 for part in self._queue if not part.future.done())

    async def submit(self, rows: Sequence[Row]) -> list[Answer]:
        """One answer per row, in order. Raises what ``send`` raised when the rows went alone, and
        ``RowRejected`` or the call's error when they went merged with others."""
        if len(rows) > self.max_rows:
            raise ValueError(f"{len(rows)} rows, over the limit of {self.max_rows} per call")
        if not self.calls and not self._queue:
            # Triton is not busy with ours: go now, alone and in place (no task, no future).
            self.calls += 1
            try:
                return await self.send(list(rows))
            finally:
                self.calls -= 1
                self._dispatch()
        future: asyncio.Future[list[Answer]] = asyncio.get_running_loop().create_future()
        cost = sum(self.cost(row) for row in rows) if self.cost is not None and self.max_cost else 0
        self._queue.append(_Part(rows, future, cost))
        if self.calls < self.max_calls and not self._soon:
            self._soon = True
            asyncio.get_running_loop().call_soon(self._dispatch_soon)
        # Cancelled here (the client went away), the future is cancelled too: _take skips it.
        return await future

    def _dispatch_soon(self) -> None:
        self._soon = False
        self._dispatch()

    def _dispatch(self) -> None:
        while self.calls < self.max_calls and self._queue:
            parts = self._take()
            if parts:
                self._launch(parts)

    def _take(self) -> list[_Part[Row, Answer]]:
        """The queue's head parts that fit one call together (none if every queued caller has gone)."""
        parts: list[_Part[Row, Answer]] = []
        count = cost = 0
        while self._queue:
            part = self._queue[0]
            if part.future.done():
                self._queue.popleft()
                continue
            if parts and (
                count + len(part.rows) > self.max_rows or (self.max_cost and cost + part.cost > self.max_cost)
            ):
                break
            self._queue.popleft()
            parts.append(part)
            count += len(part.rows)
            cost += part.cost
        return parts

    def _launch(self, parts: list[_Part[Row, Answer]]) -> None:
        # A task of its own: no caller's cancellation may cancel a call that others wait for.
        self.calls += 1
        task = asyncio.get_running_loop().create_task(self._merged(parts))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _merged(self, parts: list[_Part[Row, Answer]]) -> None:
        try:
            try:
                answers = await self.send([row for part in parts for row in part.rows])
            except asyncio.CancelledError:
                for part in parts:
                    part.future.cancel()
                raise
            except Exception as error:  # noqa: BLE001 - handed to the callers it concerns
                self._failed(parts, error)
                return
            start = 0
            for part in parts:
                end = start + len(part.rows)
                if not part.future.done():
                    part.future.set_result(answers[start:end])
                start = end
        finally:
            self.calls -= 1
            self._dispatch()

    def _failed(self, parts: list[_Part[Row, Answer]], error: Exception) -> None:
        verdict = self.judge(error)
        total = sum(len(part.rows) for part in parts)
        if isinstance(verdict, int) and not 0 <= verdict < total:
            verdict = Blame.UNKNOWN
        live = [part for part in parts if not part.future.done()]
        if isinstance(verdict, int):
            start = 0
            for part in parts:
                if start <= verdict < start + len(part.rows):
                    if not part.future.done():
                        part.future.set_exception(RowRejected(error, verdict - start))
                    # The others go again without it, ahead of what arrived since.
                    self._queue.extendleft(reversed([other for other in live if other is not part]))
                    return
                start += len(part.rows)
        if verdict is Blame.UNKNOWN and len(live) > 1:
            for part in live:
                self._launch([part])
            return
        for part in live:
            part.future.set_exception(error)
