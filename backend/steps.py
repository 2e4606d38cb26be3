"""What a preprocess step does with one `execute()` call, free of Triton types and of torch (and of the
model step's runtime), so unit tests reach it without a server.

The driver takes the requests' input tensors (name -> numpy array, None when absent; None for a request
its client has cancelled) and returns, per request, either its output tensors or the exception that fails
that request alone. The model steps' counterpart is backend.runtime.worker.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from backend.admission import MEDIA, TEXT
from backend.backpressure import QueueGate
from backend.errors import CancelledError, failure
from backend.protocol import QUEUED_AT, PreparedItem, Result, Tensors


class Preprocessor(Protocol):
    timings: dict[str, float]  # seconds spent per modality so far (the step's metrics read them)

    def prepare_request(self, inputs: Tensors) -> list[PreparedItem]: ...

    def pack(self, rows: list[PreparedItem]) -> dict[str, np.ndarray]: ...


def preprocess_requests(
    preprocessor: Preprocessor, requests: Sequence[Tensors | None], gate: QueueGate | None = None
) -> list[Result]:
    """`gate`: the model step's queue bound; requests past it, or whose expected wait for the model step is
    over its budget, are refused before any work."""
    results: list[Result] = []
    admitted = len(requests) if gate is None else gate.admit(len(requests))
    for position, inputs in enumerate(requests):
        if inputs is None:
            results.append(CancelledError())
            continue
        if position >= admitted:
            results.append(gate.refusal())  # type: ignore[union-attr]
            continue
        refusal = None if gate is None else gate.wait_refusal()
        if refusal is not None:
            results.append(refusal)
            continue
        try:
            rows = preprocessor.prepare_request(inputs)
            packed = preprocessor.pack(rows)
        except Exception as error:
            results.append(failure(error, "preprocess"))
            continue
        # The model step's queue timeout counts from here (backend.backpressure.QueueBound).
        stamp = time.monotonic_ns()
        packed[QUEUED_AT] = np.full((len(rows), 1), stamp, dtype=np.int64)
        if gate is not None:
            media = any(row.images or row.videos for row in rows)
            gate.handed_on(stamp, sum(row.length for row in rows), MEDIA if media else TEXT)
        results.append(packed)
    return results
