"""What each Triton model does with one `execute()` call, free of Triton types (and of torch) so unit tests
and the preprocess steps reach it without loading a model.

Each driver takes the requests' input tensors (name -> numpy array, None when absent; None for a request
its client has cancelled) and returns, per request, either its output tensors or the exception that fails
that request alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Protocol

import numpy as np

from backend.errors import CancelledError
from backend.protocol import PreparedItem
from backend.runtime.scheduler import MicroBatchQueue, ModelStep, failure, submit

Tensors = Mapping[str, np.ndarray | None]
Result = dict[str, np.ndarray] | Exception


class Preprocessor(Protocol):
    def prepare_request(self, inputs: Tensors) -> list[PreparedItem]: ...

    def pack(self, rows: list[PreparedItem]) -> dict[str, np.ndarray]: ...


def preprocess_requests(preprocessor: Preprocessor, requests: Sequence[Tensors | None]) -> list[Result]:
    results: list[Result] = []
    for inputs in requests:
        if inputs is None:
            results.append(CancelledError())
            continue
        try:
            rows = preprocessor.prepare_request(inputs)
            results.append(preprocessor.pack(rows))
        except Exception as error:
            results.append(failure(error, "preprocess"))
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
