"""The server models as the client calls them: the tensors a batch of rows becomes, the output to read and
how it splits into per-item values. Embedding and reranking differ only here, so both go through the same
batching, retries and errors. The gateway calls the ensembles through these same builders (with its
raw and token-id rows, per-row instructions and queries), so the contract is written once."""

from __future__ import annotations

from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from qwen3vl_client.errors import RequestError
from qwen3vl_client.items import Item, Row
from qwen3vl_client.options import Options

OUTPUT_NAME = "EMBEDDING"
SCORE_NAME = "SCORE"
TOKEN_COUNT_NAME = "TOKEN_COUNT"  # optional output: each row's prompt tokens
# Reranker errors about the query (every row carries it) start with one of these.
QUERY_MARKERS = ("QUERY_", "the query ")
# How a request is marked bulk (the server's backend.protocol has the same names, checked by a unit test):
# Triton's request priority (its queue in front of the preprocess steps) and a request parameter the
# ensembles hand to the model step, whose Python backend cannot read the priority.
PRIORITY_PARAMETER = "priority_class"
TRITON_PRIORITY = {"interactive": 1, "bulk": 2}


def priority_arguments(priority: str) -> dict[str, Any]:
    """Keyword arguments of tritonclient's ``infer`` / ``async_infer`` for a request of that class: none
    for an interactive one (the server's default), the priority and the parameter for a bulk one."""
    if priority == "interactive":
        return {}
    return {"priority": TRITON_PRIORITY[priority], "parameters": {PRIORITY_PARAMETER: priority}}


@dataclass(frozen=True)
class Pair:
    """One reranker row: a (query, document) pair and its instruction (b"" = the model's default)."""

    query: Row
    document: Row
    instruction: bytes = b""

    @property
    def media_bytes(self) -> int:
        return self.query.media_bytes + self.document.media_bytes


def _adder(module: ModuleType, inputs: list[Any]) -> Callable[[str, np.ndarray, str], None]:
    def add(name: str, array: np.ndarray, datatype: str) -> None:
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)

    return add


def _add_content(add: Callable[[str, np.ndarray, str], None], prefix: str, rows: Sequence[Row]) -> None:
    """``{prefix}TEXT``, ``{prefix}IMAGE`` and ``{prefix}VIDEO`` when any row has them; ragged image and
    video lists pad with b"" (ignored by the server)."""
    if any(row.text for row in rows):
        add(f"{prefix}TEXT", _column([row.text for row in rows]), "BYTES")
    for name, field in (("IMAGE", "images"), ("VIDEO", "videos")):
        width = max(len(getattr(row, field)) for row in rows)
        if width:
            blobs = np.full((len(rows), width), b"", dtype=object)
            for index, row in enumerate(rows):
                for slot, blob in enumerate(getattr(row, field)):
                    blobs[index, slot] = blob
            add(f"{prefix}{name}", blobs, "BYTES")


def build_inputs(module: ModuleType, rows: Sequence[Row]) -> list[Any]:
    """The embedding model's public-contract tensors for ``rows``. Every input is per row, so rows with
    different instructions, Matryoshka sizes or formats share a request ("" = the default instruction,
    0 = the full size); a request sends only the inputs its rows use."""
    inputs: list[Any] = []
    add = _adder(module, inputs)
    _add_content(add, "", rows)
    if any(row.instruction for row in rows):
        add("INSTRUCTION", _column([row.instruction for row in rows]), "BYTES")
    if any(row.dimensions for row in rows):
        add("DIMENSIONS", np.array([[row.dimensions] for row in rows], dtype=np.int32), "INT32")
    if any(row.raw for row in rows):
        add("RAW", np.array([[row.raw] for row in rows], dtype=bool), "BOOL")
    token_rows = [row.token_ids for row in rows if row.token_ids is not None]
    if token_rows:
        # Token-id rows travel alone (the gateway sends them one per request): no padding to agree on.
        if len(rows) != 1:
            raise ValueError(f"a row of token ids travels alone, not with {len(rows) - 1} others")
        add("TOKEN_IDS", np.array([token_rows[0]], dtype=np.int64), "INT64")
    return inputs


def build_rerank_inputs(module: ModuleType, pairs: Sequence[Pair]) -> list[Any]:
    """The reranker's tensors: one (query, document) pair per row."""
    inputs: list[Any] = []
    add = _adder(module, inputs)
    _add_content(add, "QUERY_", [pair.query for pair in pairs])
    _add_content(add, "DOCUMENT_", [pair.document for pair in pairs])
    if any(pair.instruction for pair in pairs):
        add("INSTRUCTION", _column([pair.instruction for pair in pairs]), "BYTES")
    return inputs


def _column(values: list[bytes]) -> np.ndarray:
    column = np.empty((len(values), 1), dtype=object)
    column[:, 0] = values
    return column


def split_rows(embedding: np.ndarray, rows: Sequence[Row]) -> list[np.ndarray]:
    """Each row cut back to its own width: the server pads narrower Matryoshka rows with zeros."""
    if embedding.ndim != 2 or embedding.shape[0] != len(rows):
        shape = embedding.shape
        raise RequestError([], f"server returned {OUTPUT_NAME} of shape {shape} for {len(rows)} rows")
    full = embedding.shape[1]
    return [
        np.array(vector[: row.dimensions or full], dtype=np.float32) for vector, row in zip(embedding, rows)
    ]


def split_scores(scores: np.ndarray, rows: Sized) -> list[float]:
    """One relevance score per (query, document) row."""
    if scores.shape != (len(rows), 1):
        raise RequestError([], f"server returned {SCORE_NAME} of shape {scores.shape} for {len(rows)} rows")
    return [float(score) for score in scores[:, 0]]


def read_answer(result: Any, endpoint: Endpoint) -> tuple[np.ndarray, np.ndarray | None]:
    """A Triton answer's ``endpoint.output`` and its TOKEN_COUNT (None when the model has no such output)."""
    return result.as_numpy(endpoint.output), result.as_numpy(TOKEN_COUNT_NAME)


def split_counts(counts: np.ndarray | None, rows: int) -> list[int]:
    """TOKEN_COUNT per row (zeros when the model has no such output)."""
    if counts is None:
        return [0] * rows
    return [int(value) for value in np.asarray(counts).reshape(rows, -1)[:, 0]]


@dataclass(frozen=True)
class Endpoint:
    """One server model as the client calls it: the tensors a batch becomes, the output to read and
    how it splits into per-item values. ``shared`` describes what every row carries besides its own
    item (the rerank query); server errors that start with one of ``shared_markers`` are about it."""

    model: str
    output: str
    build_inputs: Callable[[ModuleType, Sequence[Row]], list[Any]]
    split: Callable[[np.ndarray, Sequence[Row]], list[Any]]
    shared: str | None = None
    shared_markers: tuple[str, ...] = ()


def embedding_endpoint(options: Options) -> Endpoint:
    return Endpoint(options.model, OUTPUT_NAME, build_inputs, split_rows)


def rerank_endpoint(options: Options, query: Item, query_row: Row, instruction: str | None) -> Endpoint:
    encoded = (instruction or "").encode("utf-8")

    def build(module: ModuleType, rows: Sequence[Row]) -> list[Any]:
        return build_rerank_inputs(module, [Pair(query_row, row, encoded) for row in rows])

    return Endpoint(
        options.reranker_model,
        SCORE_NAME,
        build,
        split_scores,
        shared=f"query ({query.describe()})",
        shared_markers=QUERY_MARKERS,
    )
