"""What ``health``, ``embed``, ``embed_queries`` and ``rerank`` do, written once for both clients.

Each method is a plan: a generator that yields the operations it needs (``Ask`` the server a question,
``Offload`` blocking work such as reading a file, ``Send`` a call's requests) and returns the method's
result. ``EmbeddingClient`` performs the operations by blocking, ``AsyncEmbeddingClient`` by awaiting;
neither decides anything else, so the two cannot drift apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar, cast

import numpy as np

from qwen3vl_client._calls import (
    Call,
    OnError,
    Progress,
    check_on_error,
    embed_call,
    rerank_call,
    rerank_items,
)
from qwen3vl_client._retry import Waits, error_message
from qwen3vl_client.items import ImageInput, Item, VideoInput, check_dimensions, collect_items, encode_row
from qwen3vl_client.options import (
    DEFAULT_BACKOFF,
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_RELOAD_WAIT,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    MODEL_NAME,
    RERANKER_MODEL_NAME,
    Options,
    PriorityClass,
    Transport,
    capped,
    make_options,
)
from qwen3vl_client.results import EmbeddingResult, Health, ModelStatus, RerankResult, TensorSpec

PROBE_TEXT = "health check"

T = TypeVar("T")


@dataclass(frozen=True)
class Ask:
    """A question to the server: ``method`` of tritonclient's ``InferenceServerClient`` with ``args``."""

    method: str
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Offload:
    """Blocking work on the client (reading and encoding files), kept off the asyncio client's loop."""

    function: Callable[..., Any]
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Send:
    """Send the call's planned requests, ``max_concurrency`` at a time, into its collector."""

    call: Call


Operation = Ask | Offload | Send
# What an operation answers is sent back into the plan; what it raises is thrown into it.
Plan = Generator[Operation, Any, T]


class Run(Generic[T]):
    """A plan being performed: ``next()`` sends the last operation's ``answer`` into the plan (or
    throws its ``failure``) and gives the next operation, or None once the plan has returned its
    ``result``. Both clients step plans with it; they differ only in how they perform an operation."""

    result: T

    def __init__(self, plan: Plan[T]) -> None:
        self.plan = plan
        self.answer: Any = None
        self.failure: Exception | None = None

    def next(self) -> Operation | None:
        try:
            if self.failure is None:
                operation = self.plan.send(self.answer)
            else:
                operation = self.plan.throw(self.failure)
        except StopIteration as finished:
            self.result = finished.value
            return None
        self.answer, self.failure = None, None
        return operation


class ClientCore:
    """The settings and plans both clients share; a subclass connects (``_open``) and performs a plan's
    operations."""

    def __init__(
        self,
        url: str | None = None,
        protocol: Transport = "http",
        *,
        model: str = MODEL_NAME,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        reranker_model: str = RERANKER_MODEL_NAME,
        reload_wait: float = DEFAULT_RELOAD_WAIT,
        priority: PriorityClass = "interactive",
    ) -> None:
        self.options = make_options(
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
            reload_wait,
            priority,
        )
        self._max_batch: dict[str, int] = {}
        self._waits = Waits()
        self._connection_errors: tuple[type[BaseException], ...] = (ConnectionError,)
        self._open()

    def _open(self) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options.url!r}, protocol={self.options.protocol!r})"

    def _options_for(self, model: str) -> Plan[Options]:
        """The options with batch_size capped at ``model``'s max_batch_size, asked of the server once
        (a failed lookup is not remembered: the requests themselves then say what is wrong)."""
        if model not in self._max_batch:
            try:
                config = as_dict((yield Ask("get_model_config", (model,))))
                self._max_batch[model] = model_summary(config)["max_batch_size"]
            except Exception:  # noqa: BLE001
                return self.options
        return capped(self.options, self._max_batch[model])

    def _embed_plan(
        self,
        items: Iterable[Item | str] | None,
        texts: str | Iterable[str] | None,
        images: ImageInput | Iterable[ImageInput] | None,
        videos: VideoInput | Iterable[VideoInput] | None,
        instruction: str | None,
        dimensions: int | None,
        on_error: OnError,
        progress: Progress | None,
    ) -> Plan[np.ndarray | EmbeddingResult]:
        check_on_error(on_error)
        check_dimensions(dimensions)
        collected = collect_items(items, texts, images, videos)
        options = yield from self._options_for(self.options.model)
        call = embed_call(options, collected, instruction, dimensions, on_error, progress, self._waits)
        yield Send(call)
        result = call.collector.result()
        return result if on_error == "skip" else result.embeddings

    def _embed_queries_plan(
        self,
        queries: Iterable[Item | str],
        task: str,
        dimensions: int | None,
        on_error: OnError,
        progress: Progress | None,
    ) -> Plan[np.ndarray | EmbeddingResult]:
        if isinstance(queries, str):
            queries = [queries]
        return (yield from self._embed_plan(queries, None, None, None, task, dimensions, on_error, progress))

    def _rerank_plan(
        self,
        query: Item | str,
        documents: Iterable[Item | str],
        instruction: str | None,
        top_k: int | None,
        on_error: OnError,
        progress: Progress | None,
    ) -> Plan[RerankResult]:
        check_on_error(on_error)
        query_item, items = rerank_items(query, documents, instruction, top_k)
        query_row = yield Offload(encode_row, (query_item, None, None))
        options = yield from self._options_for(self.options.reranker_model)
        call = rerank_call(
            options, query_item, query_row, items, instruction, on_error, progress, self._waits
        )
        yield Send(call)
        return call.collector.rerank_result(top_k)

    def _health_plan(self, probe: bool) -> Plan[Health]:
        options = self.options
        base: dict[str, Any] = {"url": options.url, "protocol": options.protocol, "model": options.model}
        try:
            server: dict[str, Any] = {
                "server_live": bool((yield Ask("is_server_live"))),
                "server_ready": bool((yield Ask("is_server_ready"))),
                "server_version": as_dict((yield Ask("get_server_metadata"))).get("version"),
            }
            embedding = yield from _model_status(options.model)
        except Exception as error:  # noqa: BLE001 - any failure is reported, not raised
            return Health(**base, error=error_message(error))
        try:
            reranker = yield from _model_status(options.reranker_model)
        except Exception:  # noqa: BLE001 - a server without the reranker may refuse to talk about it
            reranker = ModelStatus(options.reranker_model)
        health = Health(
            **base,
            **server,
            model_ready=embedding.ready,
            platform=embedding.platform,
            max_batch_size=embedding.max_batch_size,
            inputs=embedding.inputs,
            outputs=embedding.outputs,
            steps=embedding.steps,
            reranker=reranker,
        )
        if not (probe and health.model_ready):
            return health
        started = time.perf_counter()
        try:
            vector = yield from self._embed_plan([PROBE_TEXT], None, None, None, None, None, "raise", None)
        except Exception as error:  # noqa: BLE001
            return replace(health, error=f"probe embedding failed: {error}")
        width = int(cast(np.ndarray, vector).shape[1])
        return replace(health, dimensions=width, probe_seconds=time.perf_counter() - started)


def _model_status(name: str) -> Plan[ModelStatus]:
    """A model's readiness; for a ready one, its configuration and its ensemble steps' readiness."""
    if not bool((yield Ask("is_model_ready", (name,)))):
        return ModelStatus(name)
    summary = model_summary(as_dict((yield Ask("get_model_config", (name,)))))
    steps = []
    for step in summary.pop("step_names"):
        steps.append((step, bool((yield Ask("is_model_ready", (step,))))))
    return ModelStatus(name, True, steps=tuple(steps), **summary)


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
