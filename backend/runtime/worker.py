"""Who runs the model step's queue (backend.runtime.scheduler), and how execute() answers: two lanes.

Micro-batches of cheap rows (each at most 1/8 of the token budget: texts, images) are run by execute()
itself, which returns their results together (Triton sends a returned list much faster than one
response-sender call per request); micro-batches with a heavy row (videos, long documents) or of bulk rows
(an indexing job's) are run by the worker thread, which answers through response senders: execute() must
return soon for Triton to hand over the next requests, an interactive one among them. A short text beside
videos waits for no video forward, and interactive text-only traffic runs as it did before the lanes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from backend.backpressure import Publisher, QueueBound
from backend.errors import UnavailableError
from backend.protocol import Result, Tensors
from backend.runtime.head import ModelHead
from backend.runtime.scheduler import MicroBatchQueue
from backend.settings import ModelSettings

logger = logging.getLogger(__name__)

# One request as execute() hands it in: its tensors (None: cancelled), its answer and its cancellation.
StepRequest = tuple[Tensors | None, Callable[[Result], None], Callable[[], bool]]


def owned(inputs: Tensors | None) -> Tensors | None:
    """Copies of a request's input arrays: Triton frees the memory behind them once execute() returns,
    and the worker may run the rows later."""
    if inputs is None:
        return None
    return {name: None if array is None else np.array(array, copy=True) for name, array in inputs.items()}


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
    the share of the device the video leaves it.

    `lanes` (the model's: on the CPU one per group of torch threads, backend.runtime.platforms; else 1):
    execute() runs its cheap micro-batches on that many threads at once (its own and lanes - 1 helpers),
    and that many worker threads run the heavy and bulk ones; the queue plans at least that many
    micro-batches when it holds that many rows. So at most 2 x lanes forwards run at once."""

    def __init__(
        self,
        head: ModelHead,
        enter_thread: Callable[[], None] = lambda: None,
        after_micro_batch: Callable[[], None] = lambda: None,
        publisher: Publisher | None = None,
        bulk_share: float = ModelSettings.bulk_share,
        bulk_backlog_tokens: int | None = None,
        expected_wait_share: float = 0.0,
        lanes: int = 1,
    ):
        """`after_micro_batch`: called after each of the worker's micro-batches and after each submit()
        (metrics: the stubs send what they hold only when called). `bulk_share`: of the model's work
        while both classes wait, what bulk rows are owed (backend.runtime.priority); `bulk_backlog_tokens`:
        bulk rows queued here, not started, beyond which execute() waits (default: one token budget, shared
        with interactive rows). Triton's queue in front of the step is first come, first served, so a
        query waits there behind every bulk request not yet taken: the bulk backlog is taken in here,
        where interactive rows overtake it. `expected_wait_share`: the preprocess steps refuse a request
        expected to wait longer than this share of the queue timeout (0: off; backend.admission)."""
        self.queue_bound = QueueBound(head.queue_timeout_seconds, publisher, wait_share=expected_wait_share)
        self.lanes = max(1, lanes)
        self.queue = MicroBatchQueue(
            head, head.limits.token_budget // CHEAP_SHARE_OF_BUDGET, bulk_share, lanes=self.lanes
        )
        self.backlog_limit = head.limits.token_budget
        self.bulk_backlog_limit = bulk_backlog_tokens
        self._enter_thread = enter_thread
        self._after_micro_batch = after_micro_batch
        self._reporting = threading.Lock()  # every thread reports; the callback need not be thread-safe
        self._helpers = (
            ThreadPoolExecutor(self.lanes - 1, "model-step-lane", initializer=enter_thread)
            if self.lanes > 1
            else None
        )
        self._threads = [
            threading.Thread(
                target=self._loop, name="model-step-worker" + (f"-{lane}" if lane else ""), daemon=True
            )
            for lane in range(self.lanes)
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self, requests: Sequence[StepRequest], bulk: Sequence[bool] | None = None
    ) -> list[Result | None]:
        """Triton's execute(): the results to return for the requests already answered, None for those
        that their sender will answer. `bulk`: per request, whether it is bulk work (default: none is)."""
        self.queue_bound.begin()
        try:
            return self._execute(requests, bulk or [False] * len(requests))
        finally:
            self.queue_bound.end()

    def _execute(self, requests: Sequence[StepRequest], bulk: Sequence[bool]) -> list[Result | None]:
        answers = ExecuteAnswers([answer for _, answer, _ in requests])
        for index, (inputs, _, cancelled) in enumerate(requests):
            refusal = None if inputs is None else self.queue_bound.refusal(inputs)
            if refusal is not None:
                answers.answer(index)(refusal)
                continue
            answer = answers.answer(index)
            if inputs is not None:
                answer = self.queue_bound.answered(inputs, answer)
            self.queue.submit(owned(inputs), answer, cancelled, bulk[index])
        self.queue_bound.taken()
        helpers = (
            [self._helpers.submit(self._run_cheap) for _ in range(self.lanes - 1)] if self._helpers else []
        )
        self._run_cheap()
        for helper in helpers:
            helper.result()
        self._report()
        if self.queue.has_room(self.backlog_limit, self.bulk_backlog_limit):
            return answers.returned()
        answers.send()  # what is done must not wait for the backlog to shrink
        self.queue.wait_for_room(self.backlog_limit, self.bulk_backlog_limit)
        return [None] * len(requests)

    def close(self, timeout: float = 10.0) -> None:
        self.queue.close(UnavailableError("the model step is shutting down; try again"))
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._helpers is not None:
            self._helpers.shutdown(wait=False)
        self.queue_bound.close()

    def _run_cheap(self) -> None:
        """Run micro-batches of cheap rows until none is left (execute()'s thread and its helpers)."""
        while self.queue.run_next(cheap=True):
            pass

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
