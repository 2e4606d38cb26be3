"""The gateway's one connection to Triton: the two ensembles over one shared gRPC channel
(``tritonclient.grpc.aio``), their capabilities read from their configs, and Triton's error codes turned
into gateway error kinds (the one place that does so).

The project's ``AsyncEmbeddingClient`` hides what the gateway needs (per-row token counts, raw rows,
token-id rows, Triton's status codes without retries), so this module builds the tensors itself.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

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


def blame(error: BaseException, rows: Sequence[int], subject: str, about_query: bool = False) -> GatewayError:
    """Triton's error for a request made of the caller's items ``rows`` as a gateway error: a row the
    backend names becomes ``subject[index]`` in the caller's numbering; reranker errors about the shared
    query name the query."""
    kind, message = kind_of(error), error_text(error)
    if kind is not Kind.INVALID:
        return GatewayError(kind, f"Triton: {message}")
    match = _ROW.search(message)
    reason = message[match.end() :] if match else message
    if about_query and reason.startswith(_QUERY_MARKERS):
        return GatewayError(kind, f"query: {reason}", param="query")
    if match and int(match.group(1)) < len(rows):
        return GatewayError(kind, f"{subject}[{rows[int(match.group(1))]}]: {reason}", param=subject)
    if len(rows) == 1:
        return GatewayError(kind, f"{subject}[{rows[0]}]: {reason}", param=subject)
    return GatewayError(kind, message, param=subject)


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


def embedding_tensors(module: Any, items: Sequence[Item], dimensions: int | None) -> list[Any]:
    tensors = Tensors(module)
    tensors.content("", items)
    if any(item.instruction for item in items):
        tensors.add("INSTRUCTION", _column([(item.instruction or "").encode() for item in items]), "BYTES")
    if dimensions:
        tensors.add("DIMENSIONS", np.full((len(items), 1), dimensions, dtype=np.int32), "INT32")
    if any(item.raw for item in items):
        tensors.add("RAW", np.array([[item.raw] for item in items], dtype=bool), "BOOL")
    token_rows = [item.token_ids for item in items if item.token_ids is not None]
    if token_rows:
        # Token-id rows travel alone (see TritonBackend.embed), so there is no padding to agree on.
        assert len(items) == 1
        tensors.add("TOKEN_IDS", np.array([token_rows[0]], dtype=np.int64), "INT64")
    return tensors.inputs


def rerank_tensors(module: Any, pairs: Sequence[tuple[Item, Item]], instruction: str | None) -> list[Any]:
    tensors = Tensors(module)
    tensors.content("QUERY_", [query for query, _ in pairs])
    tensors.content("DOCUMENT_", [document for _, document in pairs])
    if instruction:
        tensors.add("INSTRUCTION", _column([instruction.encode()] * len(pairs)), "BYTES")
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

    async def _infer(self, model: str, inputs: list[Any], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        requested = self._requested.get((model, outputs))
        if requested is None:
            # Constant per model: tritonclient copies them into each request.
            requested = [self._module.InferRequestedOutput(name) for name in outputs]
            self._requested[(model, outputs)] = requested
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

    async def embed(self, items: Sequence[Item], dimensions: int | None, subject: str) -> Outcome:
        """One vector per item, in order; the request is split at the ensemble's max_batch_size, and
        token-id rows go one per request."""
        model = self.settings.embedding_model
        info = await self.info(model)
        self._check_capabilities(items, info)
        outputs = (EMBEDDING_OUTPUT,) + ((TOKEN_COUNT_OUTPUT,) if TOKEN_COUNT_OUTPUT in info.outputs else ())
        self._connect()
        groups: list[list[int]] = []
        plain = [index for index, item in enumerate(items) if item.token_ids is None]
        groups.extend([plain[i] for i in chunk] for chunk in self._chunks(len(plain), info))
        groups.extend([index] for index, item in enumerate(items) if item.token_ids is not None)

        async def run(rows: list[int]) -> dict[str, np.ndarray]:
            chosen = [items[index] for index in rows]
            media = sum(item.media_bytes for item in chosen)
            inputs = await self._build(embedding_tensors, chosen, dimensions, media_bytes=media)
            try:
                return await self._infer(model, inputs, outputs)
            except Exception as error:  # noqa: BLE001 - Triton's errors, translated
                raise blame(error, rows, subject) from None

        answers = await _gather([run(rows) for rows in groups])
        vectors: list[Any] = [None] * len(items)
        counts: list[int] = [0] * len(items)
        for rows, answer in zip(groups, answers):
            embedding = answer[EMBEDDING_OUTPUT]
            for position, index in enumerate(rows):
                vectors[index] = embedding[position][: dimensions or embedding.shape[1]]
                if TOKEN_COUNT_OUTPUT in answer:
                    counts[index] = int(np.asarray(answer[TOKEN_COUNT_OUTPUT][position]).reshape(-1)[0])
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

    async def score(
        self, pairs: Sequence[tuple[Item, Item]], instruction: str | None, subject: str
    ) -> Outcome:
        """One relevance score per (query, document) pair, in order."""
        model = self.settings.reranker_model
        info = await self.info(model)
        outputs = (SCORE_OUTPUT,) + ((TOKEN_COUNT_OUTPUT,) if TOKEN_COUNT_OUTPUT in info.outputs else ())
        self._connect()
        groups = [list(chunk) for chunk in self._chunks(len(pairs), info)]
        shared_query = len({id(query) for query, _ in pairs}) == 1

        async def run(rows: list[int]) -> dict[str, np.ndarray]:
            chosen = [pairs[index] for index in rows]
            media = sum(query.media_bytes + document.media_bytes for query, document in chosen)
            inputs = await self._build(rerank_tensors, chosen, instruction, media_bytes=media)
            try:
                return await self._infer(model, inputs, outputs)
            except Exception as error:  # noqa: BLE001
                raise blame(error, rows, subject, about_query=shared_query) from None

        answers = await _gather([run(rows) for rows in groups])
        scores: list[float] = [0.0] * len(pairs)
        counts: list[int] = [0] * len(pairs)
        for rows, answer in zip(groups, answers):
            values = np.asarray(answer[SCORE_OUTPUT]).reshape(len(rows), -1)[:, 0]
            for position, index in enumerate(rows):
                scores[index] = float(values[position])
                if TOKEN_COUNT_OUTPUT in answer:
                    counts[index] = int(np.asarray(answer[TOKEN_COUNT_OUTPUT][position]).reshape(-1)[0])
        return Outcome(scores, counts if TOKEN_COUNT_OUTPUT in info.outputs else None)


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
