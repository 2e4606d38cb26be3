"""The gateway's one connection to Triton: the two ensembles over one shared gRPC channel
(``tritonclient.grpc.aio``), their capabilities read from their configs, and Triton's error codes turned
into gateway error kinds (the one place that does so).

The project's ``AsyncEmbeddingClient`` hides what the gateway needs (per-row token counts, raw rows,
token-id rows, Triton's status codes without retries), so this module builds the tensors itself.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.coalescing import Blame, Coalescer, RowRejected
from gateway.errors import GatewayError, Kind
from gateway.items import Item
from gateway.settings import GatewaySettings

EMBEDDING_OUTPUT = "EMBEDDING"
SCORE_OUTPUT = "SCORE"
TOKEN_COUNT_OUTPUT = "TOKEN_COUNT"
# Triton prefixes the backend's "row N: ..." with "in ensemble '<name>', ".
_ROW = re.compile(r"\brow (\d+): ")
# Reranker errors about the query (every row carries it) start with one of these.
_QUERY_MARKERS = ("QUERY_", "the query ")
# Triton's dynamic batcher refusing a request: its queue is full, or the request waited past the queue
# policy's timeout.
_TRITON_BUSY = re.compile(r"maximum queue size|timeout expired", re.IGNORECASE)
_KIND_BY_STATUS = {
    "StatusCode.INVALID_ARGUMENT": Kind.INVALID,
    "StatusCode.UNAVAILABLE": Kind.UNAVAILABLE,
    "StatusCode.RESOURCE_EXHAUSTED": Kind.UNAVAILABLE,
    "StatusCode.DEADLINE_EXCEEDED": Kind.TIMEOUT,
    "StatusCode.NOT_FOUND": Kind.UNAVAILABLE,
}


@dataclass(frozen=True)
class ModelInfo:
    """What the gateway needs to know about one ensemble."""

    name: str
    max_batch_size: int
    inputs: frozenset[str]
    outputs: frozenset[str]
    max_length: int | None = None  # the preprocess step's max_length parameter
    model_path: str | None = None  # the preprocess step's model_path parameter (None = its default)


@dataclass(frozen=True)
class EmbeddingRow:
    """One embedding row and its request's Matryoshka size: rows of several requests share a call."""

    item: Item
    dimensions: int | None = None  # None = the model's full size

    @property
    def mergeable(self) -> bool:
        # Media rows take their preprocessing time with them into a merged call: texts would wait for
        # them. Token-id rows travel alone (no padding to agree on).
        return not self.item.images and not self.item.videos and self.item.token_ids is None


@dataclass(frozen=True)
class PairRow:
    """One (query, document) row and its request's instruction."""

    query: Item
    document: Item
    instruction: str | None = None

    @property
    def mergeable(self) -> bool:
        return not (self.query.images or self.query.videos or self.document.images or self.document.videos)


@dataclass(frozen=True)
class Outcome:
    values: list[Any]  # vectors or scores, one per row
    token_counts: list[int] | None  # None when the ensemble has no TOKEN_COUNT output


def kind_of(error: BaseException) -> Kind:
    status = getattr(error, "status", None)
    code = str(status()) if callable(status) else ""
    kind = _KIND_BY_STATUS.get(code, Kind.INTERNAL)
    if kind is Kind.UNAVAILABLE and _TRITON_BUSY.search(error_text(error)):
        return Kind.OVERLOADED  # Triton is up, its queue is not: the request may be sent again
    return kind


def error_text(error: BaseException) -> str:
    message = getattr(error, "message", None)
    return str((message() if callable(message) else None) or error)


def blame(
    error: BaseException,
    rows: Sequence[int],
    subject: str,
    about_query: bool = False,
    row: int | None = None,
) -> GatewayError:
    """Triton's error for a request made of the caller's items ``rows`` as a gateway error: a row the
    backend names (or ``row``, for a call merged with other requests' rows) becomes ``subject[index]`` in
    the caller's numbering; reranker errors about the shared query name the query."""
    if isinstance(error, RowRejected):
        error, row = error.error, error.row
    kind, message = kind_of(error), error_text(error)
    if kind is not Kind.INVALID:
        return GatewayError(kind, f"Triton: {message}")
    match = _ROW.search(message)
    reason = message[match.end() :] if match else message
    if about_query and reason.startswith(_QUERY_MARKERS):
        return GatewayError(kind, f"query: {reason}", param="query")
    if row is None and match:
        row = int(match.group(1))
    if row is not None and row < len(rows):
        return GatewayError(kind, f"{subject}[{rows[row]}]: {reason}", param=subject)
    if len(rows) == 1:
        return GatewayError(kind, f"{subject}[{rows[0]}]: {reason}", param=subject)
    return GatewayError(kind, message, param=subject)


def judge(error: Exception) -> int | Blame:
    """Whom a merged call's error concerns: the row the backend names, an unknown row (an invalid request
    that names none, or an internal error: sent again alone, no other request fails with it), or every
    row (Triton unavailable, overloaded, timed out)."""
    kind = kind_of(error)
    if kind is Kind.INVALID:
        match = _ROW.search(error_text(error))
        return int(match.group(1)) if match else Blame.UNKNOWN
    return Blame.UNKNOWN if kind is Kind.INTERNAL else Blame.ALL


def _column(values: Sequence[bytes]) -> np.ndarray:
    column = np.empty((len(values), 1), dtype=object)
    column[:, 0] = list(values)
    return column


def _blobs(rows: Sequence[tuple[bytes, ...]]) -> np.ndarray | None:
    width = max(len(row) for row in rows)
    if not width:
        return None
    blobs = np.full((len(rows), width), b"", dtype=object)
    for index, row in enumerate(rows):
        for slot, blob in enumerate(row):
            blobs[index, slot] = blob
    return blobs


class Tensors:
    """Named input tensors of one request, as tritonclient wants them."""

    def __init__(self, module: Any):
        self.module = module
        self.inputs: list[Any] = []

    def add(self, name: str, array: np.ndarray, datatype: str) -> None:
        tensor = self.module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        self.inputs.append(tensor)

    def content(self, prefix: str, items: Sequence[Item]) -> None:
        if any(item.text for item in items):
            self.add(f"{prefix}TEXT", _column([(item.text or "").encode() for item in items]), "BYTES")
        for name, field in (("IMAGE", "images"), ("VIDEO", "videos")):
            blobs = _blobs([getattr(item, field) for item in items])
            if blobs is not None:
                self.add(f"{prefix}{name}", blobs, "BYTES")


def embedding_tensors(module: Any, rows: Sequence[EmbeddingRow]) -> list[Any]:
    """Every input is per row in the ensemble's contract: rows of requests with different instructions,
    Matryoshka sizes or formats share a call ("" = the default instruction, 0 = the full size)."""
    tensors = Tensors(module)
    items = [row.item for row in rows]
    tensors.content("", items)
    if any(item.instruction for item in items):
        tensors.add("INSTRUCTION", _column([(item.instruction or "").encode() for item in items]), "BYTES")
    if any(row.dimensions for row in rows):
        tensors.add("DIMENSIONS", np.array([[row.dimensions or 0] for row in rows], dtype=np.int32), "INT32")
    if any(item.raw for item in items):
        tensors.add("RAW", np.array([[item.raw] for item in items], dtype=bool), "BOOL")
    token_rows = [item.token_ids for item in items if item.token_ids is not None]
    if token_rows:
        # Token-id rows travel alone (see TritonBackend.embed), so there is no padding to agree on.
        assert len(items) == 1
        tensors.add("TOKEN_IDS", np.array([token_rows[0]], dtype=np.int64), "INT64")
    return tensors.inputs


def rerank_tensors(module: Any, rows: Sequence[PairRow]) -> list[Any]:
    tensors = Tensors(module)
    tensors.content("QUERY_", [row.query for row in rows])
    tensors.content("DOCUMENT_", [row.document for row in rows])
    if any(row.instruction for row in rows):
        tensors.add("INSTRUCTION", _column([(row.instruction or "").encode() for row in rows]), "BYTES")
    return tensors.inputs


def _parameter(config: dict, name: str) -> str | None:
    value = config.get("parameters", {}).get(name, {}).get("string_value", "")
    return value or None


class TritonBackend:
    """Both ensembles behind one gRPC channel, opened on first use inside the running loop."""

    def __init__(self, settings: GatewaySettings):
        self.settings = settings
        self._client: Any = None
        self._module: Any = None
        self._info: dict[str, ModelInfo] = {}
        self._requested: dict[tuple[str, tuple[str, ...]], list[Any]] = {}
        self._coalescers: dict[str, Coalescer] = {}
        # Told the model and row count of every Triton call (the gateway's metrics).
        self.observe_call: Callable[[str, int], None] | None = None

    def _connect(self) -> Any:
        if self._client is None:
            import tritonclient.grpc.aio as module

            self._module = module
            self._client = module.InferenceServerClient(self.settings.triton_grpc_url)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def ready(self) -> bool:
        try:
            return bool(await self._connect().is_server_ready(client_timeout=5.0))
        except Exception:  # noqa: BLE001 - unreachable or not ready: both mean "not ready"
            return False

    async def version(self) -> str | None:
        try:
            metadata = await self._connect().get_server_metadata(as_json=True, client_timeout=5.0)
        except Exception:  # noqa: BLE001
            return None
        return metadata.get("version")

    async def info(self, model: str) -> ModelInfo:
        """The ensemble's batch limit, inputs, outputs and its preprocess step's max_length (cached once
        read; Triton not answering is a 503)."""
        if model in self._info:
            return self._info[model]
        client = self._connect()
        try:
            config = (await client.get_model_config(model, as_json=True, client_timeout=10.0))["config"]
            steps = config.get("ensemble_scheduling", {}).get("step", [])
            preprocess: dict = {}
            if steps:
                name = steps[0]["model_name"]
                preprocess = (await client.get_model_config(name, as_json=True, client_timeout=10.0))[
                    "config"
                ]
        except Exception as error:  # noqa: BLE001
            raise GatewayError(
                kind_of(error), f"Triton cannot describe {model}: {error_text(error)}"
            ) from None
        max_length = _parameter(preprocess, "max_length")
        info = ModelInfo(
            name=model,
            max_batch_size=int(config.get("max_batch_size", 0)),
            inputs=frozenset(tensor["name"] for tensor in config.get("input", [])),
            outputs=frozenset(tensor["name"] for tensor in config.get("output", [])),
            max_length=int(max_length) if max_length else None,
            model_path=_parameter(preprocess, "model_path"),
        )
        self._info[model] = info
        return info

    async def _infer(
        self, model: str, inputs: list[Any], outputs: tuple[str, ...], rows: int
    ) -> dict[str, np.ndarray]:
        requested = self._requested.get((model, outputs))
        if requested is None:
            # Constant per model: tritonclient copies them into each request.
            requested = [self._module.InferRequestedOutput(name) for name in outputs]
            self._requested[(model, outputs)] = requested
        if self.observe_call is not None:
            self.observe_call(model, rows)
        result = await self._connect().infer(
            model, inputs, outputs=requested, client_timeout=self.settings.request_timeout
        )
        return {name: result.as_numpy(name) for name in outputs}

    def _chunks(self, count: int, info: ModelInfo) -> list[range]:
        size = info.max_batch_size or count
        return [range(start, min(start + size, count)) for start in range(0, count, size)]

    async def _build(self, build: Any, *args: Any, media_bytes: int) -> list[Any]:
        # Serialising megabytes of media copies them: do that off the loop.
        if media_bytes > self.settings.offload_bytes:
            return await asyncio.to_thread(build, self._module, *args)
        return build(self._module, *args)

    def _coalescer(self, model: str, info: ModelInfo, send: Callable) -> Coalescer | None:
        """The model's coalescer (None when coalescing is off or the model takes no batches)."""
        if not self.settings.coalesce_calls or info.max_batch_size < 2:
            return None
        coalescer = self._coalescers.get(model)
        if coalescer is None:
            coalescer = Coalescer(send, judge, info.max_batch_size, self.settings.coalesce_calls)
            self._coalescers[model] = coalescer
        return coalescer

    @staticmethod
    def _outputs(main: str, info: ModelInfo) -> tuple[str, ...]:
        return (main,) + ((TOKEN_COUNT_OUTPUT,) if TOKEN_COUNT_OUTPUT in info.outputs else ())

    async def _embed_rows(self, rows: list[EmbeddingRow]) -> list[tuple[np.ndarray, int]]:
        """One Triton call: (vector cut to its row's size, token count or 0) per row."""
        model = self.settings.embedding_model
        outputs = self._outputs(EMBEDDING_OUTPUT, self._info[model])
        media = sum(row.item.media_bytes for row in rows)
        inputs = await self._build(embedding_tensors, rows, media_bytes=media)
        answer = await self._infer(model, inputs, outputs, len(rows))
        embedding = answer[EMBEDDING_OUTPUT]
        counts = _counts(answer, len(rows))
        width = embedding.shape[1]
        return [
            (embedding[position][: row.dimensions or width], counts[position])
            for position, row in enumerate(rows)
        ]

    async def embed(self, items: Sequence[Item], dimensions: int | None, subject: str) -> Outcome:
        """One vector per item, in order; the request is split at the ensemble's max_batch_size, and
        token-id rows go one per request. Text rows may share a call with other requests' (coalescing)."""
        model = self.settings.embedding_model
        info = await self.info(model)
        self._check_capabilities(items, info)
        self._connect()
        rows = [EmbeddingRow(item, dimensions) for item in items]
        groups: list[list[int]] = []
        plain = [index for index, item in enumerate(items) if item.token_ids is None]
        groups.extend([plain[i] for i in chunk] for chunk in self._chunks(len(plain), info))
        groups.extend([index] for index, item in enumerate(items) if item.token_ids is not None)
        coalescer = self._coalescer(model, info, self._embed_rows)

        async def run(indices: list[int]) -> list[tuple[np.ndarray, int]]:
            chosen = [rows[index] for index in indices]
            try:
                if coalescer is not None and all(row.mergeable for row in chosen):
                    return await coalescer.submit(chosen)
                return await self._embed_rows(chosen)
            except Exception as error:  # noqa: BLE001 - Triton's errors, translated
                raise blame(error, indices, subject) from None

        answers = await _gather([run(indices) for indices in groups])
        vectors: list[Any] = [None] * len(items)
        counts: list[int] = [0] * len(items)
        for indices, answer in zip(groups, answers):
            for index, (vector, count) in zip(indices, answer):
                vectors[index] = vector
                counts[index] = count
        return Outcome(vectors, counts if TOKEN_COUNT_OUTPUT in info.outputs else None)

    def _check_capabilities(self, items: Sequence[Item], info: ModelInfo) -> None:
        needs = {"RAW"} if any(item.raw for item in items) else set()
        if any(item.token_ids is not None for item in items):
            needs.add("TOKEN_IDS")
        missing = sorted(needs - info.inputs)
        if missing:
            raise GatewayError(
                Kind.UNSUPPORTED,
                f"the Triton model {info.name} has no {', '.join(missing)} input: input_format 'vllm' "
                "needs a model repository that has it",
            )

    async def _score_rows(self, rows: list[PairRow]) -> list[tuple[float, int]]:
        """One Triton call: (score, token count or 0) per row."""
        model = self.settings.reranker_model
        outputs = self._outputs(SCORE_OUTPUT, self._info[model])
        media = sum(row.query.media_bytes + row.document.media_bytes for row in rows)
        inputs = await self._build(rerank_tensors, rows, media_bytes=media)
        answer = await self._infer(model, inputs, outputs, len(rows))
        values = np.asarray(answer[SCORE_OUTPUT]).reshape(len(rows), -1)[:, 0]
        counts = _counts(answer, len(rows))
        return [(float(values[position]), counts[position]) for position in range(len(rows))]

    async def score(
        self, pairs: Sequence[tuple[Item, Item]], instruction: str | None, subject: str
    ) -> Outcome:
        """One relevance score per (query, document) pair, in order; pairs may share a call with other
        requests' (coalescing)."""
        model = self.settings.reranker_model
        info = await self.info(model)
        self._connect()
        rows = [PairRow(query, document, instruction) for query, document in pairs]
        groups = [list(chunk) for chunk in self._chunks(len(pairs), info)]
        shared_query = len({id(query) for query, _ in pairs}) == 1
        coalescer = self._coalescer(model, info, self._score_rows)

        async def run(indices: list[int]) -> list[tuple[float, int]]:
            chosen = [rows[index] for index in indices]
            try:
                if coalescer is not None and all(row.mergeable for row in chosen):
                    return await coalescer.submit(chosen)
                return await self._score_rows(chosen)
            except Exception as error:  # noqa: BLE001
                raise blame(error, indices, subject, about_query=shared_query) from None

        answers = await _gather([run(indices) for indices in groups])
        scores: list[float] = [0.0] * len(pairs)
        counts: list[int] = [0] * len(pairs)
        for indices, answer in zip(groups, answers):
            for index, (value, count) in zip(indices, answer):
                scores[index] = value
                counts[index] = count
        return Outcome(scores, counts if TOKEN_COUNT_OUTPUT in info.outputs else None)


def _counts(answer: dict[str, np.ndarray], rows: int) -> list[int]:
    """TOKEN_COUNT per row (zeros when the ensemble has no such output)."""
    if TOKEN_COUNT_OUTPUT not in answer:
        return [0] * rows
    return [int(value) for value in np.asarray(answer[TOKEN_COUNT_OUTPUT]).reshape(rows, -1)[:, 0]]


async def _gather(calls: list) -> list:
    """All calls at once; the first failure (in call order) is raised after the others have finished."""
    if len(calls) == 1:
        # The usual request fits one batch: awaited in place, no task, no gather future.
        return [await calls[0]]
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results
