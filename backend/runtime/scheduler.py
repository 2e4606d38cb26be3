"""Cheap items first in the model step: queued rows run one micro-batch at a time, the next chosen by its
response ratio, and each request is answered as soon as its own rows are done (issue #10).

Why: Triton hands a Python model a batch of requests and waits for the whole execute(); a short text that
arrives while videos run waits for that execute and then for every video batched with it. So execute()
only queues its requests here, and one worker thread runs the queue:

- The queued rows are planned into micro-batches (backend.runtime.batching, the same packing as before),
  again whenever rows arrive.
- The next micro-batch is the one with the highest response ratio (waited + cost) / cost, both counted in
  tokens: `cost` is what the micro-batch computes (rows x longest row + the per-forward overhead),
  `waited` the work the model ran while its oldest row was queued. A short micro-batch goes before a long
  one that has waited as long; a long one is never starved, since its ratio grows with every token of
  work that passes it. A text that arrives beside videos therefore runs right after the micro-batch in
  progress.
- Two lanes (StepWorker): micro-batches of cheap rows (each at most 1/8 of the token budget: texts,
  images) are run by execute() itself, which returns their results together as before (Triton sends a
  returned list much faster than one response-sender call per request); micro-batches with a heavy row
  (videos, long documents) are run by the worker thread, which answers through response senders. A short
  text beside videos waits for no video forward, and text-only traffic runs as it did before the lanes.
- A request whose client has gone is answered CANCELLED before its next micro-batch runs; a micro-batch
  that fails for several requests is retried request by request, so that one poisonous request fails
  only itself.

What Triton 24.10 offers instead falls short: request rescheduling (RELEASE_RESCHEDULE) needs
`sequence_batching { iterative_sequence: true }`, which replaces the dynamic batcher and its queue policy;
dynamic-batcher priority levels (an ensemble passes its request's priority to its steps) need every client
to set a priority, and a text still waits for the whole execute() in progress.

Free of torch and Triton: `compute` runs one planned micro-batch, `respond` builds a request's outputs, and
each request brings its own `answer` and `cancelled` callables.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from backend.backpressure import Publisher
from backend.errors import CancelledError, InputError, UnavailableError
from backend.protocol import QUEUED_AT, PreparedItem
from backend.runtime.batching import BatchLimits, plan_micro_batches

logger = logging.getLogger(__name__)

Result = dict[str, np.ndarray] | Exception
Tensors = Mapping[str, np.ndarray | None]
Compute = Callable[[list[PreparedItem]], list[np.ndarray]]
Respond = Callable[[Sequence[PreparedItem], Sequence[np.ndarray]], dict[str, np.ndarray]]


def failure(error: Exception, what: str) -> Exception:
    """The error as a request's result, logged as its kind deserves (a client's mistake is not logged)."""
    if isinstance(error, UnavailableError):
        logger.warning("%s unavailable: %s", what, error)
    elif not isinstance(error, (InputError, CancelledError)):
        logger.exception("%s failed", what, exc_info=error)
    return error


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
    any thread adds requests, one thread calls run_next()."""

    def __init__(self, limits: BatchLimits, compute: Compute, respond: Respond, cheap_length: int = 0):
        self.limits = limits
        self.compute = compute
        self.respond = respond
        self.cheap_length = cheap_length  # rows of at most this many tokens are cheap (run_next's `cheap`)
        self._rows: list[QueuedRow] = []  # queued, not started, in arrival order
        self._plan: list[list[QueuedRow]] | None = None  # None: rows arrived since the last plan
        self._closed: UnavailableError | None = None
        self._changed = threading.Condition()

    def add(
        self,
        rows: list[PreparedItem],
        answer: Callable[[Result], None],
        cancelled: Callable[[], bool] = never_cancelled,
    ) -> None:
        request = QueuedRequest(rows, answer, cancelled)
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

    def wait_for_room(self, tokens: int) -> None:
        """Block while more than `tokens` are queued and not started (returns at once after close())."""
        with self._changed:
            self._changed.wait_for(lambda: self._has_room(tokens))

    def has_room(self, tokens: int) -> bool:
        with self._changed:
            return self._has_room(tokens)

    def _has_room(self, tokens: int) -> bool:
        return self._closed is not None or sum(row.item.length for row in self._rows) <= tokens

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def _in_lane(self, rows: Sequence[QueuedRow], cheap: bool | None) -> bool:
        """Whether a micro-batch is for that lane: cheap=True only cheap rows, False some heavy row."""
        if cheap is None:
            return True
        return all(row.item.length <= self.cheap_length for row in rows) == cheap

    def run_next(self, block: bool = False, cheap: bool | None = None) -> bool:
        """Run the next micro-batch (of the lane `cheap` names: True, only cheap rows; False, with a heavy
        row; None, any) and answer the requests it completes. False when there is none (with `block`, it
        waits for one or for close()). Two threads may call it at once: each takes its own micro-batch."""
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
            batch = max(
                candidates,
                key=lambda rows: (response_ratio(rows, self.limits), -micro_batch_cost(rows, self.limits)),
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
        items = [row.item for row in self._rows]
        plan = plan_micro_batches(
            [item.length for item in items], [item.vision_patch_count for item in items], self.limits
        )
        return [[self._rows[index] for index in indices] for indices in plan]

    def _run(self, batch: list[QueuedRow]) -> None:
        try:
            outputs = self.compute([row.item for row in batch])
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
                    self._store(part, self.compute([row.item for row in part]))
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
            result: Result = self.respond(request.rows, request.outputs)  # type: ignore[arg-type]
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


@dataclass(frozen=True)
class ModelStep:
    """What a model step does with its requests: wire tensors -> rows, one planned micro-batch -> outputs
    per row, a request's rows and outputs -> its output tensors."""

    unpack: Callable[[Tensors], list[PreparedItem]]
    compute: Compute
    respond: Respond
    limits: BatchLimits
    # StepWorker's QueueBound refuses a request that waited longer than this in the step's queue (0 = never).
    queue_timeout_seconds: float = 0.0


def submit(
    queue: MicroBatchQueue,
    step: ModelStep,
    inputs: Tensors | None,
    answer: Callable[[Result], None],
    cancelled: Callable[[], bool] = never_cancelled,
) -> None:
    """Queue one request's rows; a request already cancelled (None) or with bad inputs is answered here."""
    if inputs is None:
        answer(CancelledError())
        return
    try:
        rows = step.unpack(inputs)
    except Exception as error:
        answer(failure(error, "model input"))
        return
    queue.add(rows, answer, cancelled)


def owned(inputs: Tensors | None) -> Tensors | None:
    """Copies of a request's input arrays: Triton frees the memory behind them once execute() returns,
    and the worker may run the rows later."""
    if inputs is None:
        return None
    return {name: None if array is None else np.array(array, copy=True) for name, array in inputs.items()}


# Refusals for the queue timeout are logged at most this often (under overload they come by the thousand).
REFUSAL_LOG_SECONDS = 10.0


class QueueBound:
    """The model step's share of its queue bound (backend.backpressure has the whole, and why not Triton's
    queue policy): a request that waited more than `timeout_seconds` since the preprocess step answered it
    (QUEUED_AT) is refused with UNAVAILABLE before anything is unpacked, and after each execute() the newest
    stamp taken is published, so that the preprocess steps know how many of theirs still wait. A request
    without QUEUED_AT (a client calling the step directly) is never refused."""

    def __init__(
        self,
        timeout_seconds: float,
        publisher: Publisher | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ):
        self.timeout_ns = int(timeout_seconds * 1e9)
        self.publisher = publisher
        self.clock = clock
        self.refused = 0
        self._newest = 0
        self._unlogged = 0
        self._logged_at: int | None = None

    def refusal(self, inputs: Tensors) -> UnavailableError | None:
        stamps = inputs.get(QUEUED_AT)
        if stamps is None or stamps.size == 0:
            return None
        now = self.clock()
        # A stamp from the future (only a client calling the step directly can send one) must not mark
        # every request still waiting as taken.
        self._newest = max(self._newest, min(int(stamps.max()), now))
        waited = now - int(stamps.min())
        if self.timeout_ns <= 0 or waited <= self.timeout_ns:
            return None
        self.refused += 1
        self._unlogged += 1
        if self._logged_at is None or now - self._logged_at >= REFUSAL_LOG_SECONDS * 1e9:
            logger.warning(
                "overloaded: refused %d request(s) that waited over the queue timeout of %g s",
                self._unlogged,
                self.timeout_ns / 1e9,
            )
            self._unlogged, self._logged_at = 0, now
        return UnavailableError(
            f"waited {waited / 1e9:.1f} s for the model step, over its queue timeout of "
            f"{self.timeout_ns / 1e9:g} s: the server is overloaded; retry later"
        )

    def begin(self) -> None:
        """When execute() starts."""
        if self.publisher is not None:
            self.publisher.busy()

    def taken(self) -> None:
        """After an execute() has read its requests."""
        if self.publisher is not None and self._newest:
            self.publisher.taken(self._newest)

    def end(self) -> None:
        """When execute() returns."""
        if self.publisher is not None:
            self.publisher.free()

    def close(self) -> None:
        """At unload: the channel file goes with the step."""
        if self.publisher is not None:
            self.publisher.close()


# A row of at most this share of the token budget is cheap: execute() runs micro-batches of such rows itself.
CHEAP_SHARE_OF_BUDGET = 8


class ExecuteAnswers:
    """The answers that come while one execute() runs, which it returns together: Triton sends a returned
    list in one message, much faster than one response-sender call per request (on the 2-core host, text
    throughput at 16 in flight fell by 15 % when every request went through its sender). Answers that
    come once execute() is done, or while it waits for room, go through each request's own sender."""

    def __init__(self, senders: Sequence[Callable[[Result], None]]):
        self._senders = list(senders)
        self._results: list[Result | None] = [None] * len(self._senders)
        self._open = True
        self._lock = threading.Lock()

    def answer(self, index: int) -> Callable[[Result], None]:
        def deliver(result: Result) -> None:
            with self._lock:
                if self._open:
                    self._results[index] = result
                    return
            self._senders[index](result)

        return deliver

    def returned(self) -> list[Result | None]:
        """The answers so far, for execute() to return (None: answered later through the sender)."""
        with self._lock:
            self._open = False
            return self._results

    def send(self) -> None:
        """Send the answers so far through the senders, and any later one as it comes."""
        for index, result in enumerate(self.returned()):
            if result is not None:
                self._senders[index](result)


class StepWorker:
    """The model step's worker thread over a MicroBatchQueue.

    submit() (Triton's execute()) queues the requests, runs the micro-batches of cheap rows itself (rows of
    at most 1/8 of the token budget), beside the worker's forward rather than after it, and returns as soon
    as at most one token budget of heavy work is queued and not started: beyond that, requests wait in
    Triton's queue, which the preprocess steps bound (backend.backpressure; refused: UNAVAILABLE), and
    Triton batches them. So a short text beside videos waits for no video forward at all, only for
    the share of the device the video leaves it; at most two forwards run at once."""

    def __init__(
        self,
        step: ModelStep,
        enter_thread: Callable[[], None] = lambda: None,
        after_micro_batch: Callable[[], None] = lambda: None,
        publisher: Publisher | None = None,
    ):
        """`after_micro_batch`: called after each of the worker's micro-batches and after each submit()
        (metrics: the stubs send what they hold only when called)."""
        self.step = step
        self.queue_bound = QueueBound(step.queue_timeout_seconds, publisher)
        cheap_length = step.limits.token_budget // CHEAP_SHARE_OF_BUDGET
        self.queue = MicroBatchQueue(step.limits, step.compute, step.respond, cheap_length)
        self.backlog_limit = step.limits.token_budget
        self._enter_thread = enter_thread
        self._after_micro_batch = after_micro_batch
        self._reporting = threading.Lock()  # both threads report; the callback need not be thread-safe
        self._thread = threading.Thread(target=self._loop, name="model-step-worker", daemon=True)
        self._thread.start()

    def submit(
        self, requests: Sequence[tuple[Tensors | None, Callable[[Result], None], Callable[[], bool]]]
    ) -> list[Result | None]:
        """Triton's execute(): the results to return for the requests already answered, None for those
        that their sender will answer."""
        self.queue_bound.begin()
        try:
            return self._execute(requests)
        finally:
            self.queue_bound.end()

    def _execute(
        self, requests: Sequence[tuple[Tensors | None, Callable[[Result], None], Callable[[], bool]]]
    ) -> list[Result | None]:
        answers = ExecuteAnswers([answer for _, answer, _ in requests])
        for index, (inputs, _, cancelled) in enumerate(requests):
            refusal = None if inputs is None else self.queue_bound.refusal(inputs)
            if refusal is not None:
                answers.answer(index)(refusal)
                continue
            submit(self.queue, self.step, owned(inputs), answers.answer(index), cancelled)
        self.queue_bound.taken()
        while self.queue.run_next(cheap=True):
            pass
        self._report()
        if self.queue.has_room(self.backlog_limit):
            return answers.returned()
        answers.send()  # what is done must not wait for the backlog to shrink
        self.queue.wait_for_room(self.backlog_limit)
        return [None] * len(requests)

    def close(self, timeout: float = 10.0) -> None:
        self.queue.close(UnavailableError("the model step is shutting down; try again"))
        self._thread.join(timeout)
        self.queue_bound.close()

    def _loop(self) -> None:
        self._enter_thread()
        while True:
            try:
                ran = self.queue.run_next(block=True, cheap=False)
            except Exception:
                logger.exception("model step worker")
                ran = True
            if ran:
                self._report()
            elif self.queue.closed:
                return

    def _report(self) -> None:
        """Metrics failing must not fail requests, which may already be answered."""
        with self._reporting:
            try:
                self._after_micro_batch()
            except Exception:
                logger.exception("reporting the model step's progress failed")
