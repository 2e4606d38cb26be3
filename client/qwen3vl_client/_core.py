"""What the sync and asyncio clients share: tensors, outputs, error policy, result assembly."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np

from qwen3vl_client.errors import EmbeddingError, ItemError, RequestError, ServerUnavailableError
from qwen3vl_client.items import Batch, Row

MODEL_NAME = "qwen3_vl_embedding"
# The task the vLLM-Ascend tutorial and the README use for web-search queries.
DEFAULT_QUERY_TASK = "Given a web search query, retrieve relevant passages that answer the query"
PROBE_TEXT = "health check"
OUTPUT_NAME = "EMBEDDING"
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
        url, protocol, model, batch_size, max_concurrency, timeout, retries, backoff, max_request_bytes
    )


def build_inputs(module: ModuleType, rows: Sequence[Row]) -> list[Any]:
    """The public-contract tensors for ``rows``; ragged image/video lists pad with b"" (ignored)."""
    inputs = []

    def add(name: str, array: np.ndarray, datatype: str) -> None:
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)

    if any(row.text for row in rows):
        add("TEXT", _column([row.text for row in rows]), "BYTES")
    for name, field in (("IMAGE", "images"), ("VIDEO", "videos")):
        width = max(len(getattr(row, field)) for row in rows)
        if width:
            blobs = np.full((len(rows), width), b"", dtype=object)
            for index, row in enumerate(rows):
                for slot, blob in enumerate(getattr(row, field)):
                    blobs[index, slot] = blob
            add(name, blobs, "BYTES")
    if any(row.instruction for row in rows):
        add("INSTRUCTION", _column([row.instruction for row in rows]), "BYTES")
    if any(row.dimensions for row in rows):
        add("DIMENSIONS", np.array([[row.dimensions] for row in rows], dtype=np.int32), "INT32")
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


def blame(error: BaseException, batch: Batch) -> EmbeddingError:
    """The server's error as an ``ItemError`` for the row it names, else a ``RequestError``."""
    message = error_message(error)
    status = error_status(error)
    match = _ROW.search(message)
    if match and int(match.group(1)) < len(batch):
        row = int(match.group(1))
        return ItemError(batch.indices[row], batch.items[row].describe(), message[match.end() :], status)
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
    blamed = blame(error, batch)
    if on_error == "skip" and is_invalid(error):
        # One bad row fails the whole request: send the items alone to find every bad one.
        if len(batch) > 1:
            return Split(batch.singles())
        if isinstance(blamed, ItemError):
            return Fail(blamed)
    raise blamed from error


class Collector:
    """Vectors and errors by input index, reported to ``progress`` as items finish."""

    def __init__(self, count: int, on_error: OnError, progress: Progress | None):
        self.vectors: list[np.ndarray | None] = [None] * count
        self.errors: list[ItemError] = []
        self.on_error = on_error
        self.progress = progress

    def done(self, batch: Batch, embedding: np.ndarray) -> None:
        for index, vector in zip(batch.indices, split_rows(embedding, batch.rows)):
            self.vectors[index] = vector
        self._advance(len(batch))

    def fail(self, error: ItemError) -> None:
        if self.on_error == "raise":
            raise error
        self.errors.append(error)
        self._advance(1)

    def _advance(self, count: int) -> None:
        if self.progress is not None:
            self.progress(count)

    def result(self) -> EmbeddingResult:
        width = max((vector.shape[0] for vector in self.vectors if vector is not None), default=0)
        embeddings = np.full((len(self.vectors), width), np.nan, dtype=np.float32)
        for index, vector in enumerate(self.vectors):
            if vector is not None:
                # Items that asked for fewer dimensions than others are zero-padded, as the server does.
                embeddings[index] = 0.0
                embeddings[index, : vector.shape[0]] = vector
        return EmbeddingResult(embeddings, tuple(sorted(self.errors, key=lambda error: error.index)))


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
        mask = np.ones(len(self.embeddings), dtype=bool)
        mask[[error.index for error in self.errors]] = False
        return mask


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
