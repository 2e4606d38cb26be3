"""What the sync and asyncio clients share: tensors, outputs, error policy, result assembly.

An ``Endpoint`` says how one server model is called (its tensors, how its output splits into rows);
embedding and reranking differ only there, so both go through the same batching, retries and errors.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any, Literal

import numpy as np

from qwen3vl_client.errors import EmbeddingError, ItemError, RequestError, ServerUnavailableError
from qwen3vl_client.items import Batch, Item, Row, collect_items, plan_batches

MODEL_NAME = "qwen3_vl_embedding"
RERANKER_MODEL_NAME = "qwen3_vl_reranker"
# The task the vLLM-Ascend tutorial and the README use for web-search queries.
DEFAULT_QUERY_TASK = "Given a web search query, retrieve relevant passages that answer the query"
PROBE_TEXT = "health check"
OUTPUT_NAME = "EMBEDDING"
SCORE_NAME = "SCORE"
DEFAULT_URLS = {"http": "localhost:8000", "grpc": "localhost:8001"}
DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_CONCURRENCY = 4
DEFAULT_TIMEOUT = 300.0
DEFAULT_RETRIES = 4
DEFAULT_BACKOFF = 0.5
MAX_BACKOFF = 8.0
# Triton's HTTP endpoint refuses bodies over 64 MiB by default (--http-max-input-size).
DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024

Transport = Literal["http", "grpc"]  # tritonclient protocol
OnError = Literal["raise", "skip"]
Progress = Callable[[int], object]

_UNAVAILABLE = {"StatusCode.UNAVAILABLE", "503"}
_INVALID = {"StatusCode.INVALID_ARGUMENT", "400"}
# Triton prefixes the backend's "row N: ..." with "in ensemble '<name>', ".
_ROW = re.compile(r"\brow (\d+): ")


@dataclass(frozen=True)
class Options:
    """Per-client settings, validated once."""

    url: str
    protocol: Transport
    model: str
    batch_size: int
    max_concurrency: int
    timeout: float
    retries: int
    backoff: float
    max_request_bytes: int
    reranker_model: str = RERANKER_MODEL_NAME


def make_options(
    url: str | None,
    protocol: Transport,
    model: str,
    batch_size: int,
    max_concurrency: int,
    timeout: float,
    retries: int,
    backoff: float,
    max_request_bytes: int,
    reranker_model: str = RERANKER_MODEL_NAME,
) -> Options:
    if protocol not in DEFAULT_URLS:
        raise ValueError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
    for name, value in (("batch_size", batch_size), ("max_concurrency", max_concurrency)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if retries < 0 or backoff < 0 or timeout <= 0 or max_request_bytes < 1:
        raise ValueError("retries and backoff must be >= 0, timeout and max_request_bytes > 0")
    url = url or DEFAULT_URLS[protocol]
    # tritonclient wants host:port; people paste URLs.
    url = re.sub(r"^(https?|grpc)://", "", url).rstrip("/")
    return Options(
        url,
        protocol,
        model,
        batch_size,
        max_concurrency,
        timeout,
        retries,
        backoff,
        max_request_bytes,
        reranker_model,
    )


def capped(options: Options, max_batch_size: int) -> Options:
    """``options`` with ``batch_size`` at most the model's ``max_batch_size`` (0: no limit known): a
    request of more rows would be refused by the server."""
    if 0 < max_batch_size < options.batch_size:
        return replace(options, batch_size=max_batch_size)
    return options


def check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


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
    """The embedding model's public-contract tensors for ``rows``."""
    inputs: list[Any] = []
    add = _adder(module, inputs)
    _add_content(add, "", rows)
    if any(row.instruction for row in rows):
        add("INSTRUCTION", _column([row.instruction for row in rows]), "BYTES")
    if any(row.dimensions for row in rows):
        add("DIMENSIONS", np.array([[row.dimensions] for row in rows], dtype=np.int32), "INT32")
    return inputs


def build_rerank_inputs(module: ModuleType, rows: Sequence[Row], query: Row, instruction: bytes) -> list[Any]:
    """The reranker's tensors: one (query, document) pair per row, the query repeated on every row."""
    inputs: list[Any] = []
    add = _adder(module, inputs)
    _add_content(add, "QUERY_", [query] * len(rows))
    _add_content(add, "DOCUMENT_", rows)
    if instruction:
        add("INSTRUCTION", _column([instruction] * len(rows)), "BYTES")
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


def split_scores(scores: np.ndarray, rows: Sequence[Row]) -> list[float]:
    """One relevance score per (query, document) row."""
    if scores.shape != (len(rows), 1):
        raise RequestError([], f"server returned {SCORE_NAME} of shape {scores.shape} for {len(rows)} rows")
    return [float(score) for score in scores[:, 0]]


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

    def about_shared(self, reason: str) -> bool:
        return bool(self.shared_markers) and reason.startswith(self.shared_markers)


def embedding_endpoint(options: Options) -> Endpoint:
    return Endpoint(options.model, OUTPUT_NAME, build_inputs, split_rows)


def rerank_endpoint(options: Options, query: Item, query_row: Row, instruction: str | None) -> Endpoint:
    encoded = (instruction or "").encode("utf-8")

    def build(module: ModuleType, rows: Sequence[Row]) -> list[Any]:
        return build_rerank_inputs(module, rows, query_row, encoded)

    return Endpoint(
        options.reranker_model,
        SCORE_NAME,
        build,
        split_scores,
        shared=f"query ({query.describe()})",
        shared_markers=("QUERY_", "the query "),
    )


def rerank_items(
    query: Item | str,
    documents: Iterable[Item | str] | Item | str,
    instruction: str | None,
    top_k: int | None,
) -> tuple[Item, list[Item]]:
    """The query and documents of a ``rerank`` call as items, checked before anything is sent."""
    if isinstance(query, str):
        query = Item(text=query)
    if not isinstance(query, Item):
        raise TypeError(f"query must be a str or an Item, got {type(query).__name__}")
    if not (query.text or query.images or query.videos):
        raise ValueError("the query has no content: give it text, images or videos")
    if instruction is not None and not isinstance(instruction, str):
        raise TypeError(f"instruction must be a str, got {type(instruction).__name__}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
    items = collect_items(documents)
    for name, item in [("the query", query)] + [(f"document {i}", item) for i, item in enumerate(items)]:
        for field in ("instruction", "dimensions"):
            if getattr(item, field) is not None:
                raise ValueError(
                    f"{name} sets {field}, which reranking does not use"
                    + (": pass rerank(..., instruction=...)" if field == "instruction" else "")
                )
    return query, items


def error_status(error: BaseException) -> str | None:
    status = getattr(error, "status", None)
    return str(status()) if callable(status) and status() is not None else None


def error_message(error: BaseException) -> str:
    message = getattr(error, "message", None)
    text = message() if callable(message) else None
    return str(text or error) or type(error).__name__


def is_unavailable(error: BaseException, connection_errors: tuple[type[BaseException], ...]) -> bool:
    """UNAVAILABLE, HTTP 503 or a failed connection: worth a retry. Timeouts are not retried."""
    if error_status(error) in _UNAVAILABLE:
        return True
    timed_out = isinstance(error, (TimeoutError, asyncio.TimeoutError))
    return isinstance(error, connection_errors) and not timed_out


def is_invalid(error: BaseException) -> bool:
    return error_status(error) in _INVALID


def row_reason(message: str) -> str:
    """What follows the backend's "row N: " (and Triton's ensemble prefix), else the whole message."""
    match = _ROW.search(message)
    return message[match.end() :] if match else message


def blame(error: BaseException, batch: Batch, endpoint: Endpoint | None = None) -> EmbeddingError:
    """The server's error as an ``ItemError`` for the row it names, else a ``RequestError``."""
    message = error_message(error)
    status = error_status(error)
    match = _ROW.search(message)
    reason = message[match.end() :] if match else message
    if endpoint is not None and endpoint.about_shared(reason):
        # Every row carries the query: the request failed because of it, not of a document.
        return RequestError(batch.indices, f"{endpoint.shared}: {reason}", status)
    if match and int(match.group(1)) < len(batch):
        row = int(match.group(1))
        return ItemError(batch.indices[row], batch.items[row].describe(), reason, status)
    if len(batch) == 1 and is_invalid(error):
        return ItemError(batch.indices[0], batch.items[0].describe(), message, status)
    return RequestError(batch.indices, f"{status or type(error).__name__}: {message}", status)


@dataclass(frozen=True)
class Retry:
    delay: float


@dataclass(frozen=True)
class Split:
    batches: list[Batch]


@dataclass(frozen=True)
class Fail:
    error: ItemError


Step = Retry | Split | Fail


def next_step(
    error: BaseException,
    batch: Batch,
    attempt: int,
    options: Options,
    on_error: OnError,
    connection_errors: tuple[type[BaseException], ...],
    endpoint: Endpoint | None = None,
) -> Step:
    """What to do about a failed request; raises the error the caller should see instead."""
    if is_unavailable(error, connection_errors):
        if attempt < options.retries:
            return Retry(min(options.backoff * 2**attempt, MAX_BACKOFF))
        attempts = options.retries + 1
        raise ServerUnavailableError(
            batch.indices,
            f"server at {options.url} unavailable after {attempts} attempts: {error_message(error)}",
            error_status(error),
        ) from error
    blamed = blame(error, batch, endpoint)
    about_shared = endpoint is not None and endpoint.about_shared(row_reason(error_message(error)))
    if on_error == "skip" and is_invalid(error) and not about_shared:
        # One bad row fails the whole request: send the items alone to find every bad one.
        if len(batch) > 1:
            return Split(batch.singles())
        if isinstance(blamed, ItemError):
            return Fail(blamed)
    raise blamed from error


class Collector:
    """Per-item values (vectors, scores) and errors by input index, reported to ``progress`` as items
    finish; ``split`` cuts a request's output into its items' values."""

    def __init__(
        self,
        count: int,
        on_error: OnError,
        progress: Progress | None,
        split: Callable[[np.ndarray, Sequence[Row]], list[Any]] = split_rows,
    ):
        self.values: list[Any] = [None] * count
        self.errors: list[ItemError] = []
        self.on_error = on_error
        self.progress = progress
        self.split = split

    def done(self, batch: Batch, output: np.ndarray) -> None:
        for index, value in zip(batch.indices, self.split(output, batch.rows)):
            self.values[index] = value
        self._advance(len(batch))

    def fail(self, error: ItemError) -> None:
        if self.on_error == "raise":
            raise error
        self.errors.append(error)
        self._advance(1)

    def _advance(self, count: int) -> None:
        if self.progress is not None:
            self.progress(count)

    def sorted_errors(self) -> tuple[ItemError, ...]:
        return tuple(sorted(self.errors, key=lambda error: error.index))

    def result(self) -> EmbeddingResult:
        width = max((vector.shape[0] for vector in self.values if vector is not None), default=0)
        embeddings = np.full((len(self.values), width), np.nan, dtype=np.float32)
        for index, vector in enumerate(self.values):
            if vector is not None:
                # Items that asked for fewer dimensions than others are zero-padded, as the server does.
                embeddings[index] = 0.0
                embeddings[index, : vector.shape[0]] = vector
        return EmbeddingResult(embeddings, self.sorted_errors())

    def rerank_result(self, top_k: int | None) -> RerankResult:
        scores = np.array([np.nan if score is None else score for score in self.values], dtype=np.float32)
        scored = np.flatnonzero(~np.isnan(scores))
        # Stable: equal scores keep input order.
        order = scored[np.argsort(-scores[scored], kind="stable")][:top_k]
        return RerankResult(scores, order, self.sorted_errors())


@dataclass(frozen=True)
class Call:
    """One ``embed`` or ``rerank`` call: the model it calls, its planned requests (files are read as
    they are due) and where the results land. The sync and asyncio clients only send requests."""

    endpoint: Endpoint
    planned: Iterator[Batch | ItemError]
    collector: Collector


def embed_call(
    options: Options,
    items: list[Item],
    instruction: str | None,
    dimensions: int | None,
    on_error: OnError,
    progress: Progress | None,
) -> Call:
    endpoint = embedding_endpoint(options)
    planned = plan_batches(items, instruction, dimensions, options.batch_size, options.max_request_bytes)
    return Call(endpoint, planned, Collector(len(items), on_error, progress, endpoint.split))


def rerank_call(
    options: Options,
    query: Item,
    query_row: Row,
    documents: list[Item],
    instruction: str | None,
    on_error: OnError,
    progress: Progress | None,
) -> Call:
    """``query_row`` is the query as sent (its files read once); every request repeats it."""
    endpoint = rerank_endpoint(options, query, query_row, instruction)
    planned = plan_batches(
        documents, None, None, options.batch_size, options.max_request_bytes, row_overhead=query_row.nbytes
    )
    return Call(endpoint, planned, Collector(len(documents), on_error, progress, endpoint.split))


def _ok_mask(count: int, errors: Sequence[ItemError]) -> np.ndarray:
    mask = np.ones(count, dtype=bool)
    mask[[error.index for error in errors]] = False
    return mask


@dataclass(frozen=True)
class EmbeddingResult:
    """What ``embed(..., on_error="skip")`` returns.

    ``embeddings`` has one float32 row per input item, in input order; rows of failed items are NaN.
    ``errors`` holds one ``ItemError`` per failed item (``error.index`` is its row).
    """

    embeddings: np.ndarray
    errors: tuple[ItemError, ...]

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
class Health:
    """Server and model readiness plus a summary of the model's configuration.

    ``dimensions`` is the full embedding width, measured by embedding one short text (``probe``).
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

    @property
    def ok(self) -> bool:
        return self.server_ready and self.model_ready and self.error is None


_DATATYPES = {"TYPE_STRING": "BYTES"}


def _specs(tensors: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
    return tuple(
        TensorSpec(
            name=tensor["name"],
            datatype=_DATATYPES.get(tensor["data_type"], tensor["data_type"].removeprefix("TYPE_")),
            # gRPC's JSON spells int64 dims as strings.
            dims=tuple(int(dim) for dim in tensor.get("dims", ())),
            optional=bool(tensor.get("optional", False)),
        )
        for tensor in tensors
    )


def as_dict(answer: Any) -> dict[str, Any]:
    """A metadata or config answer as a dict: HTTP gives dicts, gRPC protobufs."""
    if isinstance(answer, dict):
        return answer
    from google.protobuf import json_format

    return json_format.MessageToDict(answer, preserving_proto_field_name=True)


def model_summary(config: dict[str, Any]) -> dict[str, Any]:
    """Health fields from a model config (HTTP's dict, or gRPC's under "config")."""
    config = config.get("config", config)
    steps = config.get("ensemble_scheduling", {}).get("step", [])
    return {
        "platform": config.get("platform") or config.get("backend") or None,
        "max_batch_size": int(config.get("max_batch_size", 0)),
        "inputs": _specs(config.get("input", [])),
        "outputs": _specs(config.get("output", [])),
        "step_names": [step["model_name"] for step in steps],
    }
