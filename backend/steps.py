"""What each Triton model does with one `execute()` call, free of Triton types so unit tests reach it.

Each handler takes the requests' input tensors (name -> numpy array, None when absent) and returns, per
request, either its output tensors or the exception that fails that request alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from backend.errors import InputError
from backend.modeling import EmbeddingModel
from backend.preprocess import EmbeddingPreprocessor
from backend.records import PreparedItem
from backend.reranker import RerankPreprocessor
from backend.scoring import RerankModel
from backend.wire import unpack_rows

logger = logging.getLogger(__name__)

Tensors = Mapping[str, np.ndarray | None]
Result = dict[str, np.ndarray] | Exception

PREPROCESS_INPUTS = ("TEXT", "IMAGE", "VIDEO", "INSTRUCTION", "DIMENSIONS")
RERANK_PREPROCESS_INPUTS = (
    "QUERY_TEXT",
    "QUERY_IMAGE",
    "QUERY_VIDEO",
    "DOCUMENT_TEXT",
    "DOCUMENT_IMAGE",
    "DOCUMENT_VIDEO",
    "INSTRUCTION",
)
MODEL_INPUTS = (
    "INPUT_IDS",
    "SEQ_LEN",
    "EMBED_DIM",
    "IMAGE_PATCHES",
    "IMAGE_GRID_THW",
    "VIDEO_PATCHES",
    "VIDEO_GRID_THW",
)


def _failure(error: Exception, what: str) -> Exception:
    if not isinstance(error, InputError):
        logger.exception("%s failed", what, exc_info=error)
    return error


def preprocess_requests(
    preprocessor: EmbeddingPreprocessor | RerankPreprocessor, requests: Sequence[Tensors]
) -> list[Result]:
    results: list[Result] = []
    for inputs in requests:
        try:
            rows = preprocessor.prepare_request(inputs)
            results.append(preprocessor.pack(rows))
        except Exception as error:
            results.append(_failure(error, "preprocess"))
    return results


def embedding_output(vectors: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """[B, D] float32 where D is the widest row; narrower (Matryoshka) rows are zero-padded, which keeps
    their norm at 1 and their dot products unchanged."""
    width = max(vector.shape[0] for vector in vectors)
    out = np.zeros((len(vectors), width), dtype=np.float32)
    for index, vector in enumerate(vectors):
        out[index, : vector.shape[0]] = vector
    return {"EMBEDDING": out}


def _checked_rows(model: EmbeddingModel, inputs: Tensors) -> list[PreparedItem]:
    rows = unpack_rows(inputs)
    for index, row in enumerate(rows):
        if row.dimensions and not 0 < row.dimensions <= model.hidden_size:
            raise InputError(f"EMBED_DIM {row.dimensions} is outside 1..{model.hidden_size}", row=index)
    return rows


def run_model_requests(
    requests: Sequence[Tensors],
    unpack: Callable[[Tensors], list[PreparedItem]],
    compute: Callable[[list[PreparedItem]], list[np.ndarray]],
    respond: Callable[[Sequence[np.ndarray]], dict[str, np.ndarray]],
) -> list[Result]:
    """All rows of all requests go through `compute` together (it packs them into micro-batches); if that
    fails, each request is retried alone so that one poisonous request fails only itself."""
    results: list[Result | None] = [None] * len(requests)
    accepted: list[tuple[int, list[PreparedItem]]] = []
    for position, inputs in enumerate(requests):
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
                    results[position] = respond(compute(rows))
                except Exception as single_error:
                    results[position] = _failure(single_error, "forward")
    else:
        offset = 0
        for position, rows in accepted:
            results[position] = respond(outputs[offset : offset + len(rows)])
            offset += len(rows)
    return results  # type: ignore[return-value]


def embed_requests(model: EmbeddingModel, requests: Sequence[Tensors]) -> list[Result]:
    return run_model_requests(
        requests, lambda inputs: _checked_rows(model, inputs), model.embed, embedding_output
    )


def score_output(scores: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    return {"SCORE": np.stack(scores).astype(np.float32).reshape(-1, 1)}


def rerank_requests(model: RerankModel, requests: Sequence[Tensors]) -> list[Result]:
    return run_model_requests(requests, unpack_rows, model.score, score_output)
