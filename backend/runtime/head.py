"""The seam between the model step's queue and its model: what the queue (backend.runtime.scheduler) and the
worker (backend.runtime.worker) ask of the embedding and reranking models.

The path of a request through it: the stub's execute() -> StepWorker.submit() -> MicroBatchQueue.submit()
-> `unpack` -> the queue plans micro-batches -> `compute` (BackboneRunner.compute: one forward, then the
model's own `row_outputs`) -> `respond` once all of a request's rows are done. Free of torch and Triton,
so the queue's tests bring a head of plain functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from backend.protocol import PreparedItem, Tensors
from backend.runtime.batching import BatchLimits


class ModelHead(Protocol):
    """A model the model step runs: EmbeddingModel and RerankModel (both BackboneRunner subclasses)."""

    @property
    def limits(self) -> BatchLimits:
        """How rows are packed into one forward (token, row and vision-patch budgets)."""
        ...

    @property
    def queue_timeout_seconds(self) -> float:
        """A request that waited longer in the step's queue is refused (backend.backpressure.QueueBound;
        0 = never)."""
        ...

    def unpack(self, inputs: Tensors) -> list[PreparedItem]:
        """One request's wire tensors as rows the model can run; InputError names a bad row."""
        ...

    def compute(self, rows: Sequence[PreparedItem]) -> list[np.ndarray]:
        """One output per row, in row order, for rows already planned as one micro-batch."""
        ...

    def respond(self, rows: Sequence[PreparedItem], outputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """A request's output tensors from all of its rows and their outputs."""
        ...
