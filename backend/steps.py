"""What each Triton model does with one `execute()` call, free of Triton types (and of torch) so unit tests
and the preprocess steps reach it without loading a model.

Each driver takes the requests' input tensors (name -> numpy array, None when absent; None for a request
its client has cancelled) and returns, per request, either its output tensors or the exception that fails
that request alone.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Protocol

import numpy as np

from backend.backpressure import QueueGate
from backend.errors import CancelledError
from backend.protocol import QUEUED_AT, PreparedItem
from backend.runtime.scheduler import MicroBatchQueue, ModelStep, failure, submit

Tensors = Mapping[str, np.ndarray | None]
Result = dict[str, np.ndarray] | Exception


class Preprocessor(Protocol):
    def prepare_request(self, inputs: Tensors) -> list[PreparedItem]: ...

    def pack(self, rows: list[PreparedItem]) -> dict[str, np.ndarray]: ...


def preprocess_requests(
    preprocessor: Preprocessor, requests: Sequence[Tensors | None], gate: QueueGate | None = None
) -> list[Result]:
    """`gate`: the model step's queue bound; requests past it are refused before any work."""
    results: list[Result] = []
    admitted = len(requests) if gate is None else gate.admit(len(requests))
    for position, inputs in enumerate(requests):
        if inputs is None:
            results.append(CancelledError())
            continue
        if position >= admitted:
            results.append(gate.refusal())  # type: ignore[union-attr]
            continue
        try:
            rows = preprocessor.prepare_request(inputs)
            packed = preprocessor.pack(rows)
        except Exception as error:
            results.append(failure(error, "preprocess"))
            continue
        # The model step's queue timeout counts from here (backend.runtime.scheduler.QueueBound).
        stamp = time.monotonic_ns()
        packed[QUEUED_AT] = np.full((len(rows), 1), stamp, dtype=np.int64)
        if gate is not None:
            gate.handed_on(stamp)
        results.append(packed)
    return results


def run_model_requests(step: ModelStep, requests: Sequence[Tensors | None]) -> list[Result]:
    """Every request through the model step in this thread, as the server's worker thread runs them
    (backend.runtime.scheduler): micro-batches in response-ratio order, a failing micro-batch retried
    request by request so that one poisonous request fails only itself."""
    results: list[Result | None] = [None] * len(requests)
    queue = MicroBatchQueue(step.limits, step.compute, step.respond)
    for position, inputs in enumerate(requests):
        submit(queue, step, inputs, partial(results.__setitem__, position))
    while queue.run_next():
        pass
    return results  # type: ignore[return-value]


def token_counts(rows: Sequence[PreparedItem]) -> np.ndarray:
    """INT32 [B, 1]: the tokens each row ran, vision placeholders included (TOKEN_COUNT)."""
    return np.array([[row.length] for row in rows], dtype=np.int32)
