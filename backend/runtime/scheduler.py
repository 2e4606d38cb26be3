"""Cheap items first in the model step: queued rows run one micro-batch at a time, the next chosen by its
response ratio, and each request is answered as soon as its own rows are done (issue #10).

Why: Triton hands a Python model a batch of requests and waits for the whole execute(); a short text that
arrives while videos run waits for that execute and then for every video batched with it. So execute()
only queues its requests here (backend.runtime.worker says who runs the queue, and when execute() returns):

- The queued rows are planned into micro-batches (backend.runtime.batching, the same packing as before),
  again whenever rows arrive.
- The next micro-batch is the one with the highest response ratio (waited + cost) / cost, both counted in
  tokens: `cost` is what the micro-batch computes (rows x longest row + the per-forward overhead),
  `waited` the work the model ran while its oldest row was queued. A short micro-batch goes before a long
  one that has waited as long; a long one is never starved, since its ratio grows with every token of
  work that passes it. A text that arrives beside videos therefore runs right after the micro-batch in
  progress.
- Bulk rows (an indexing job's, marked by its client) are planned apart from interactive ones, and an
  interactive micro-batch goes first, bulk being owed a bounded share of the work
  (backend.runtime.priority); within a class, the response ratio decides.
- A request whose client has gone is answered CANCELLED before its next micro-batch runs; a micro-batch
  that fails for several requests is retried request by request, so that one poisonous request fails
  only itself.

What Triton 24.10 offers instead falls short: request rescheduling (RELEASE_RESCHEDULE) needs
`sequence_batching { iterative_sequence: true }`, which replaces the dynamic batcher and its queue policy;
dynamic-batcher priority levels (an ensemble passes its request's priority to its steps) need every client
to set a priority, and a text still waits for the whole execute() in progress.

Free of torch and Triton: the model is a ModelHead (backend.runtime.head), and each request brings its own
`answer` and `cancelled` callables.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from backend.errors import CancelledError, UnavailableError, failure
from backend.protocol import PreparedItem, Result, Tensors
from backend.runtime.batching import BatchLimits, plan_micro_batches
from backend.runtime.head import ModelHead
from backend.runtime.priority import BulkShare
from backend.settings import ModelSettings

logger = logging.getLogger(__name__)


def never_cancelled() -> bool:
    return False


# A request's cancellation is read through an IPC round trip to the server: at most this often per
# request (execute() has just read it for the requests it hands in).
CANCEL_CHECK_SECONDS = 0.05


@dataclass(eq=False)
class QueuedRequest:
    rows: list[PreparedItem]
    answer: Callable[[Result], None]
    cancelled: Callable[[], bool]
    bulk: bool = False  # an indexing job's: runs after interactive rows (backend.runtime.priority)
    outputs: list[np.ndarray | None] = field(init=False)
    left: int = field(init=False)  # rows without an output yet
    done: bool = False  # answered (with outputs or an error)
    checked_at: float = field(default_factory=time.monotonic)  # last read of its cancellation

    def __post_init__(self) -> None:
        self.outputs = [None] * len(self.rows)
        self.left = len(self.rows)


@dataclass(eq=False)
class QueuedRow:
    request: QueuedRequest
    index: int
    waited: int = 0  # tokens of work the model ran while this row was queued (all of a forward it saw end)

    @property
    def item(self) -> PreparedItem:
        return self.request.rows[self.index]


def micro_batch_cost(rows: Sequence[QueuedRow], limits: BatchLimits) -> int:
    """Tokens one forward over these rows computes, padding and the per-forward overhead included."""
    return len(rows) * max(row.item.length for row in rows) + limits.batch_overhead_tokens


def response_ratio(rows: Sequence[QueuedRow], limits: BatchLimits) -> float:
    cost = micro_batch_cost(rows, limits)
    return (max(row.waited for row in rows) + cost) / cost


def _gone(request: QueuedRequest) -> bool:
    """Whether the request's client has cancelled it (read at most every CANCEL_CHECK_SECONDS); a failed
    check counts as not cancelled."""
    now = time.monotonic()
    if now - request.checked_at < CANCEL_CHECK_SECONDS:
        return False
    request.checked_at = now
    try:
        return request.cancelled()
    except Exception:
        logger.exception("checking a request for cancellation failed")
        return False


class MicroBatchQueue:
    """The rows of queued requests, run micro-batch by micro-batch in response-ratio order. Thread-safe:
    any thread adds requests, several may call run_next() (each takes its own micro-batch)."""

    def __init__(
        self,
        head: ModelHead,
        cheap_length: int = 0,
        bulk_share: float = ModelSettings.bulk_share,
        lanes: int = 1,
    ):
        """`lanes`: threads that run micro-batches at once (backend.runtime.worker); each class's rows are
        planned into at least that many micro-batches when there are that many rows."""
        self.head = head
        self.lanes = max(1, lanes)
        self.priority = BulkShare(bulk_share)
        self.limits = head.limits
        self.cheap_length = cheap_length  # rows of at most this many tokens are cheap (run_next's `cheap`)
        self._rows: list[QueuedRow] = []  # queued, not started, in arrival order
        self._plan: list[list[QueuedRow]] | None = None  # None: rows arrived since the last plan
        self._closed: UnavailableError | None = None
        self._changed = threading.Condition()

    def submit(
        self,
        inputs: Tensors | None,
        answer: Callable[[Result], None],
        cancelled: Callable[[], bool] = never_cancelled,
        bulk: bool = False,
    ) -> None:
        """Queue one request's rows (the head unpacks its tensors); a request already cancelled (None) or
        with bad inputs is answered here. `bulk`: the request is an indexing job's."""
        if inputs is None:
            answer(CancelledError())
            return
        try:
            rows = self.head.unpack(inputs)
        except Exception as error:
            answer(failure(error, "model input"))
            return
        self.add(rows, answer, cancelled, bulk)

    def add(
        self,
        rows: list[PreparedItem],
        answer: Callable[[Result], None],
        cancelled: Callable[[], bool] = never_cancelled,
        bulk: bool = False,
    ) -> None:
        request = QueuedRequest(rows, answer, cancelled, bulk)
        with self._changed:
            closed = self._closed
            if not closed:
                self._rows.extend(QueuedRow(request, index) for index in range(len(rows)))
                self._plan = None
                self._changed.notify_all()
        if closed:
            self._answer(request, closed)
        elif not rows:
            self._finish(request)

    def wait_for_room(self, tokens: int, bulk_tokens: int | None = None) -> None:
        """Block while more than `tokens` are queued and not started (returns at once after close()).
        With `bulk_tokens`, bulk rows count against that bound instead (backend.runtime.priority)."""
        with self._changed:
            self._changed.wait_for(lambda: self._has_room(tokens, bulk_tokens))

    def has_room(self, tokens: int, bulk_tokens: int | None = None) -> bool:
        with self._changed:
            return self._has_room(tokens, bulk_tokens)

    def _has_room(self, tokens: int, bulk_tokens: int | None = None) -> bool:
        if self._closed is not None:
            return True
        if bulk_tokens is None:
            return sum(row.item.length for row in self._rows) <= tokens
        interactive = sum(row.item.length for row in self._rows if not row.request.bulk)
        bulk = sum(row.item.length for row in self._rows if row.request.bulk)
        return interactive <= tokens and bulk <= bulk_tokens

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def _in_lane(self, rows: Sequence[QueuedRow], cheap: bool | None) -> bool:
        """Whether a micro-batch is for that lane: cheap=True only cheap interactive rows, False some heavy
        or bulk row (bulk never runs in the cheap lane: that is execute()'s, and Triton hands the step no
        new request, an interactive one included, until execute() returns)."""
        if cheap is None:
            return True
        return all(row.item.length <= self.cheap_length and not row.request.bulk for row in rows) == cheap

    def run_next(self, block: bool = False, cheap: bool | None = None) -> bool:
        """Run the next micro-batch (of the lane `cheap` names: True, only cheap rows; False, with a heavy
        row; None, any) and answer the requests it completes. False when there is none (with `block`, it
        waits for one or for close()). Several threads may call it at once: each takes its own micro-batch."""
        with self._changed:
            if block:
                self._changed.wait_for(
                    lambda: self._closed is not None or any(self._in_lane([row], cheap) for row in self._rows)
                )
            batch = self._take(cheap)
        if batch is None:
            return False
        cost = micro_batch_cost(batch, self.limits)
        try:
            self._run(batch)
        except Exception as error:  # our own bug: still answer every request of the micro-batch
            for request in dict.fromkeys(row.request for row in batch):
                self._answer(request, failure(error, "micro-batch"))
        with self._changed:
            for row in self._rows:
                row.waited += cost
            self._changed.notify_all()  # room for wait_for_room()
        return True

    def close(self, error: UnavailableError) -> None:
        """Answer every queued request with `error`, refuse new ones, and let a blocked run_next() return."""
        with self._changed:
            self._closed = error
            requests = list(dict.fromkeys(row.request for row in self._rows))
            self._rows, self._plan = [], None
            self._changed.notify_all()
        for request in requests:
            self._answer(request, error)

    def _take(self, cheap: bool | None = None) -> list[QueuedRow] | None:
        """Under the lock: the next micro-batch, out of the queue. A request found cancelled is answered
        (rare, so under the lock) and the choice made again without it."""
        while True:
            self._rows = [row for row in self._rows if not row.request.done]
            if not self._rows:
                return None
            if self._plan is None:
                self._plan = self._planned()
            self._plan = [[row for row in batch if not row.request.done] for batch in self._plan]
            self._plan = [batch for batch in self._plan if batch]
            candidates = [rows for rows in self._plan if self._in_lane(rows, cheap)]
            if not candidates:
                return None
            batch = self.priority.choose(
                candidates,
                lambda rows: rows[0].request.bulk,  # planned per class: every row is of the same one
                lambda rows: (response_ratio(rows, self.limits), -micro_batch_cost(rows, self.limits)),
                lambda rows: micro_batch_cost(rows, self.limits),
            )
            cancelled = [request for request in dict.fromkeys(row.request for row in batch) if _gone(request)]
            if not cancelled:
                self._plan.remove(batch)
                taken = {id(row) for row in batch}
                self._rows = [row for row in self._rows if id(row) not in taken]
                return batch
            for request in cancelled:
                self._answer(request, CancelledError())

    def _planned(self) -> list[list[QueuedRow]]:
        """Micro-batches of each class's rows apart (backend.runtime.priority says why); with several
        lanes, at most 1/lanes of a class's rows in one, so that every lane has one to run."""
        plan: list[list[QueuedRow]] = []
        for bulk in (False, True):
            rows = [row for row in self._rows if row.request.bulk == bulk]
            items = [row.item for row in rows]
            limits = self.limits
            if self.lanes > 1 and rows:
                share = -(-len(rows) // self.lanes)
                limits = dataclasses.replace(limits, max_rows=min(limits.max_rows, share))
            indices = plan_micro_batches(
                [item.length for item in items], [item.vision_patch_count for item in items], limits
            )
            plan.extend([rows[index] for index in batch] for batch in indices)
        return plan

    def _run(self, batch: list[QueuedRow]) -> None:
        try:
            outputs = self.head.compute([row.item for row in batch])
        except Exception as error:
            requests = list(dict.fromkeys(row.request for row in batch))
            if len(requests) == 1:
                self._answer(requests[0], failure(error, "forward"))
                return
            logger.warning(
                "micro-batch failed (%s); retrying its %d requests one by one", error, len(requests)
            )
            for request in requests:
                part = [row for row in batch if row.request is request]
                try:
                    self._store(part, self.head.compute([row.item for row in part]))
                except Exception as single_error:
                    self._answer(request, failure(single_error, "forward"))
            return
        self._store(batch, outputs)

    def _store(self, rows: list[QueuedRow], outputs: Sequence[np.ndarray]) -> None:
        for row, output in zip(rows, outputs, strict=True):
            row.request.outputs[row.index] = output
            row.request.left -= 1
        for request in dict.fromkeys(row.request for row in rows):
            if request.left == 0 and not request.done:
                self._finish(request)

    def _finish(self, request: QueuedRequest) -> None:
        try:
            # Every row has its output by now (left == 0).
            result: Result = self.head.respond(request.rows, request.outputs)  # type: ignore[arg-type]
        except Exception as error:
            result = failure(error, "output")
        self._answer(request, result)

    def _answer(self, request: QueuedRequest, result: Result) -> None:
        """Each request is answered once; its rows still queued are dropped by the next _take()."""
        if request.done:
            return
        request.done = True
        try:
            request.answer(result)
        except Exception:
            logger.exception("answering a request failed")
