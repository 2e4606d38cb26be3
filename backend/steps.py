"""What each Triton model does with one `execute()` call, free of Triton types (and of torch) so unit tests
and the preprocess steps reach it without loading a model.

Each driver takes the requests' input tensors (name -> numpy array, None when absent; None for a request
its client has cancelled) and returns, per request, either its output tensors or the exception that fails
that request alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np

from backend.errors import CancelledError, InputError, UnavailableError
from backend.protocol import PreparedItem

logger = logging.getLogger(__name__)

Tensors = Mapping[str, np.ndarray | None]
Result = dict[str, np.ndarray] | Exception


class Preprocessor(Protocol):
    def prepare_request(self, inputs: Tensors) -> list[PreparedItem]: ...

    def pack(self, rows: list[PreparedItem]) -> dict[str, np.ndarray]: ...


def _failure(error: Exception, what: str) -> Exception:
    if isinstance(error, UnavailableError):
        logger.warning("%s unavailable: %s", what, error)
    elif not isinstance(error, InputError):
        logger.exception("%s failed", what, exc_info=error)
    return error


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
            results.append(_failure(error, "preprocess"))
    return results


def run_model_requests(
    requests: Sequence[Tensors | None],
    unpack: Callable[[Tensors], list[PreparedItem]],
    compute: Callable[[list[PreparedItem]], list[np.ndarray]],
    respond: Callable[[Sequence[PreparedItem], Sequence[np.ndarray]], dict[str, np.ndarray]],
) -> list[Result]:
    """All rows of all requests go through `compute` together (it packs them into micro-batches); if that
    fails, each request is retried alone so that one poisonous request fails only itself."""
    results: list[Result | None] = [None] * len(requests)
    accepted: list[tuple[int, list[PreparedItem]]] = []
    for position, inputs in enumerate(requests):
        if inputs is None:
            results[position] = CancelledError()
            continue
        try:
            accepted.append((position, unpack(inputs)))
        except Exception as error:
            results[position] = _failure(error, "model input")
    if not accepted:
        return results  # type: ignore[return-value]
    try:
        outputs = compute([row for _, rows in accepted for row in rows])
    except Exception as error:
        if len(accepted) == 1:
            results[accepted[0][0]] = _failure(error, "forward")
        else:
            logger.warning(
                "batched forward failed (%s); retrying %d requests one by one", error, len(accepted)
            )
            for position, rows in accepted:
                try:
                    results[position] = respond(rows, compute(rows))
                except Exception as single_error:
                    results[position] = _failure(single_error, "forward")
    else:
        offset = 0
        for position, rows in accepted:
            results[position] = respond(rows, outputs[offset : offset + len(rows)])
            offset += len(rows)
    return results  # type: ignore[return-value]


def token_counts(rows: Sequence[PreparedItem]) -> np.ndarray:
    """INT32 [B, 1]: the tokens each row ran, vision placeholders included (TOKEN_COUNT)."""
    return np.array([[row.length] for row in rows], dtype=np.int32)
