"""Drivers the unit tests run the backend through, in one thread and without Triton: what the server does
across threads and processes, reduced to what a test needs to see."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from backend.errors import ROW_PATTERN
from backend.media.image import FACTOR, smart_resize
from backend.media.resize import resize_bicubic_antialias
from backend.protocol import PreparedItem, Result, Tensors
from backend.runtime.batching import BatchLimits
from backend.runtime.head import ModelHead
from backend.runtime.scheduler import MicroBatchQueue


@dataclass(frozen=True)
class FunctionHead:
    """A ModelHead (backend.runtime.head) of plain functions, for the queue's tests."""

    unpack: Callable[[Tensors], list[PreparedItem]]
    compute: Callable[[Sequence[PreparedItem]], list[np.ndarray]]
    respond: Callable[[Sequence[PreparedItem], Sequence[np.ndarray]], dict[str, np.ndarray]]
    limits: BatchLimits
    queue_timeout_seconds: float = 0.0


def run_model_requests(head: ModelHead, requests: Sequence[Tensors | None]) -> list[Result]:
    """Every request through the model step in this thread, as the server's worker thread runs them
    (backend.runtime.worker): micro-batches in response-ratio order, a failing micro-batch retried
    request by request so that one poisonous request fails only itself."""
    results: list[Result | None] = [None] * len(requests)
    queue = MicroBatchQueue(head)
    for position, inputs in enumerate(requests):
        queue.submit(inputs, partial(results.__setitem__, position))
    while queue.run_next():
        pass
    return results  # type: ignore[return-value]


def row_of_message(message: str) -> int | None:
    """The batch row a server error message names, if any (the first `row N: `), as the client reads it."""
    match = ROW_PATTERN.search(message)
    return int(match.group(1)) if match else None


def resize_frames(frames: np.ndarray, min_pixels: int, max_pixels: int) -> np.ndarray:
    """uint8 [T, H, W, 3] -> uint8 [T, h, w, 3] at the smart-resized size, with torchvision's tensor resize
    semantics (bicubic, antialias, align_corners=False, then clamp and round back to uint8), in numpy."""
    _, height, width, _ = frames.shape
    resized_height, resized_width = smart_resize(height, width, FACTOR, min_pixels, max_pixels)
    return resize_bicubic_antialias(frames, resized_height, resized_width)
