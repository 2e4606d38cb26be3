"""What the clients return: embeddings, rerank scores and health reports, with the ``ItemError`` of each
item that failed (re-exported here, defined in ``qwen3vl_client.errors``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qwen3vl_client.errors import ItemError

__all__ = ["EmbeddingResult", "Health", "ItemError", "ModelStatus", "RerankResult", "TensorSpec"]


def _ok_mask(count: int, errors: Sequence[ItemError]) -> np.ndarray:
    mask = np.ones(count, dtype=bool)
    mask[[error.index for error in errors]] = False
    return mask


@dataclass(frozen=True)
class EmbeddingResult:
    """What ``embed(..., on_error="skip")`` returns.

    ``embeddings`` has one float32 row per input item, in input order; rows of failed items are NaN.
    ``errors`` holds one ``ItemError`` per failed item (``error.index`` is its row).
    ``token_counts``: int32, the tokens the model ran for each item (vision placeholders included; -1 for
    failed items), or None when the server does not report them (no ``TOKEN_COUNT`` output).
    """

    embeddings: np.ndarray
    errors: tuple[ItemError, ...]
    token_counts: np.ndarray | None = None

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of the items that were embedded."""
        return _ok_mask(len(self.embeddings), self.errors)


@dataclass(frozen=True)
class RerankResult:
    """What ``rerank`` returns.

    ``scores``: float32 ``[n]``, one relevance score in [0, 1] per document, in input order (NaN for
    failed documents). ``order``: document indices, best first (ties in input order), failed documents
    left out, at most ``top_k``. ``errors``: one ``ItemError`` per failed document (``on_error="skip"``).
    """

    scores: np.ndarray
    order: np.ndarray
    errors: tuple[ItemError, ...] = ()

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of the documents that were scored."""
        return _ok_mask(len(self.scores), self.errors)

    def top(self, k: int | None = None) -> list[tuple[int, float]]:
        """``[(index, score), ...]``, best first: the first ``k`` of ``order`` (default: all of it)."""
        return [(int(index), float(self.scores[index])) for index in self.order[:k]]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    dims: tuple[int, ...]
    optional: bool = False

    def __str__(self) -> str:
        return f"{self.name} {self.datatype} {list(self.dims)}{' optional' if self.optional else ''}"


@dataclass(frozen=True)
class ModelStatus:
    """One served model's readiness and configuration (its ensemble steps with their readiness)."""

    name: str
    ready: bool = False
    platform: str | None = None
    max_batch_size: int | None = None
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    steps: tuple[tuple[str, bool], ...] = ()


@dataclass(frozen=True)
class Health:
    """Server and model readiness plus a summary of the model's configuration.

    ``dimensions`` is the full embedding width, measured by embedding one short text (``probe``).
    ``reranker`` is the reranker model's status (``None`` when the server could not be asked); it does
    not count in ``ok``, since a server may serve the embedding model alone.
    ``error`` says why the server could not be asked, when it could not.
    """

    url: str
    protocol: str
    model: str
    server_live: bool = False
    server_ready: bool = False
    model_ready: bool = False
    server_version: str | None = None
    platform: str | None = None
    max_batch_size: int | None = None
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    steps: tuple[tuple[str, bool], ...] = ()
    dimensions: int | None = None
    probe_seconds: float | None = None
    error: str | None = None
    reranker: ModelStatus | None = None

    @property
    def ok(self) -> bool:
        return self.server_ready and self.model_ready and self.error is None

    @property
    def embedding(self) -> ModelStatus:
        """The embedding model's fields as a ``ModelStatus``, like ``reranker``."""
        return ModelStatus(
            self.model,
            self.model_ready,
            self.platform,
            self.max_batch_size,
            self.inputs,
            self.outputs,
            self.steps,
        )
