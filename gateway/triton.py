"""The gateway's one connection to Triton: the two ensembles over one shared gRPC channel
(``tritonclient.grpc.aio``), their capabilities read from their configs, and coalescing hooked in;
Triton's status codes become gateway error kinds in ``gateway.triton_errors`` (the one place that does so).

What goes on the wire and what an error message names (the tensors, the outputs, ``row N:``, the query
markers) is the client's sans-IO core (``qwen3vl_client._wire`` and ``_retry``): one contract, two
callers. The gateway retries only what the client retries within its reload budget: a model being reloaded
(the watchdog repairing a dead stub) or a restarting tritonserver, polled at most 0.5 s apart for up to
RELOAD_WAIT_SECS, so that a reload is a latency spike and not an error; anything else is answered with
Triton's own status (overload at once: a refusal is only useful if it is fast). Past the budget a reload is
a 503 with Retry-After, never a 404 or a 500.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from gateway import priority
from gateway.calls import Outcome, assemble, call_groups, estimated_tokens, gather, mergeable
from gateway.coalescing import Coalescer
from gateway.errors import GatewayError
from gateway.items import Item
from gateway.models import ModelInfo, check_inputs, model_info
from gateway.settings import GatewaySettings
from gateway.triton_errors import (
    RELOAD_FIRST_BACKOFF_SECS,
    RELOAD_WAIT_SECS,
    blame,
    judge,
    kind_of,
    reloading,
)
from qwen3vl_client import _wire
from qwen3vl_client._plans import model_summary
from qwen3vl_client._retry import GRPC_CHANNEL_ARGS, error_text, reload_delay
from qwen3vl_client._wire import TOKEN_COUNT_NAME, Pair
from qwen3vl_client.items import Row
from qwen3vl_client.options import PriorityClass

WireRow = TypeVar("WireRow", Row, Pair)
Value = TypeVar("Value")


class TritonBackend:
    """Both ensembles behind one gRPC channel, opened on first use inside the running loop."""

    def __init__(self, settings: GatewaySettings):
        self.settings = settings
        self._client: Any = None
        self._module: Any = None
        self._info: dict[str, ModelInfo] = {}
        self._requested: dict[tuple[str, tuple[str, ...]], list[Any]] = {}
        self._coalescers: dict[tuple[str, PriorityClass], Coalescer] = {}
        # Told the model and row count of every Triton call (the gateway's metrics).
        self.observe_call: Callable[[str, int], None] | None = None

    def _connect(self) -> Any:
        if self._client is None:
            import tritonclient.grpc.aio as module

            self._module = module
            self._client = module.InferenceServerClient(
                self.settings.triton_grpc_url, channel_args=GRPC_CHANNEL_ARGS
            )
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
        config = self._connect().get_model_config
        try:
            summary = model_summary(await config(model, as_json=True, client_timeout=10.0))
            preprocess: dict[str, Any] = {}
            for step in summary["step_names"][:1]:
                preprocess = (await config(step, as_json=True, client_timeout=10.0))["config"]
        except Exception as error:  # noqa: BLE001
            raise GatewayError(
                kind_of(error), f"Triton cannot describe {model}: {error_text(error)}"
            ) from None
        self._info[model] = model_info(model, summary, preprocess)
        return self._info[model]

    async def _infer(
        self,
        model: str,
        output: str,
        build: Callable,
        rows: Sequence[Row | Pair],
        priority_class: PriorityClass = "interactive",
    ) -> tuple[np.ndarray, list[int]]:
        """One Triton call of ``rows``: (``output``, TOKEN_COUNT per row or zeros), marked with the
        callers' priority class (gateway.priority)."""
        outputs = (output,) + ((TOKEN_COUNT_NAME,) if TOKEN_COUNT_NAME in self._info[model].outputs else ())
        requested = self._requested.get((model, outputs))
        if requested is None:
            # Constant per model: tritonclient copies them into each request.
            requested = [self._module.InferRequestedOutput(name) for name in outputs]
            self._requested[(model, outputs)] = requested
        # Serialising megabytes of media copies them: do that off the loop.
        if sum(row.media_bytes for row in rows) > self.settings.offload_bytes:
            inputs = await asyncio.to_thread(build, self._module, rows)
        else:
            inputs = build(self._module, rows)
        if self.observe_call is not None:
            self.observe_call(model, len(rows))
        result = await self._connect().infer(
            model,
            inputs,
            outputs=requested,
            client_timeout=self.settings.request_timeout,
            **_wire.priority_arguments(priority_class),
        )
        counts = result.as_numpy(TOKEN_COUNT_NAME) if len(outputs) > 1 else None
        return result.as_numpy(output), _wire.split_counts(counts, len(rows))

    async def _embed_rows(
        self, rows: list[Row], priority_class: PriorityClass = "interactive"
    ) -> list[tuple[np.ndarray, int]]:
        model = self.settings.embedding_model
        embedding, counts = await self._infer(
            model, _wire.OUTPUT_NAME, _wire.build_inputs, rows, priority_class
        )
        return list(zip(_wire.split_rows(embedding, rows), counts))

    async def _score_rows(
        self, pairs: list[Pair], priority_class: PriorityClass = "interactive"
    ) -> list[tuple[float, int]]:
        model = self.settings.reranker_model
        scores, counts = await self._infer(
            model, _wire.SCORE_NAME, _wire.build_rerank_inputs, pairs, priority_class
        )
        return list(zip(_wire.split_scores(scores, pairs), counts))

    async def embed(self, items: Sequence[Item], dimensions: int | None, subject: str) -> Outcome:
        """One vector per item, in order; the request is split at the ensemble's max_batch_size, and
        token-id rows go one per request. Text rows may share a call with other requests' (coalescing)."""
        info = await self.info(self.settings.embedding_model)
        check_inputs(items, info)
        alone = [index for index, item in enumerate(items) if item.token_ids is not None]
        groups = call_groups(len(items), info.max_batch_size, alone)
        marked = priority.current.get()
        send = functools.partial(self._embed_rows, priority_class=marked)
        return await self._call(
            info, groups, lambda i: items[i].row(dimensions), send, subject, False, marked
        )

    async def score(
        self, pairs: Sequence[tuple[Item, Item]], instruction: str | None, subject: str
    ) -> Outcome:
        """One relevance score per (query, document) pair, in order; pairs may share a call with other
        requests' (coalescing)."""
        info = await self.info(self.settings.reranker_model)
        groups = call_groups(len(pairs), info.max_batch_size)
        about_query = len({id(query) for query, _ in pairs}) == 1

        def pair(index: int) -> Pair:
            query, document = pairs[index]
            return Pair(query.row(), document.row(), (instruction or "").encode())

        marked = priority.current.get()
        send = functools.partial(self._score_rows, priority_class=marked)
        return await self._call(info, groups, pair, send, subject, about_query, marked)

    async def _call(
        self,
        info: ModelInfo,
        groups: list[list[int]],
        row: Callable[[int], WireRow],
        send: Callable[[list[WireRow]], Awaitable[list[tuple[Value, int]]]],
        subject: str,
        about_query: bool = False,
        priority_class: PriorityClass = "interactive",
    ) -> Outcome:
        """Each group of the caller's items as one call (or merged with other requests' rows of the same
        priority class), all at once; Triton's errors named in the caller's numbering."""
        self._connect()
        coalescer: Coalescer | None = None
        if self.settings.coalesce_calls and info.max_batch_size >= 2:
            # One coalescer per class: a bulk row riding in an interactive call would be served first.
            coalescer = self._coalescers.get((info.name, priority_class))
            if coalescer is None:
                coalescer = Coalescer(
                    send,
                    judge,
                    info.max_batch_size,
                    self.settings.coalesce_calls,
                    estimated_tokens,
                    self.settings.coalesce_max_tokens,
                )
                self._coalescers[(info.name, priority_class)] = coalescer

        async def run(indices: list[int]) -> list[tuple[Value, int]]:
            try:
                # Encoded here: text that cannot be (a lone surrogate) fails as Triton's errors do.
                rows = [row(index) for index in indices]
            except Exception as error:  # noqa: BLE001 - Triton's errors, translated
                raise blame(error, indices, subject, about_query) from None
            loop = asyncio.get_running_loop()
            deadline = loop.time() + min(RELOAD_WAIT_SECS, self.settings.request_timeout)
            attempt = 0
            while True:
                try:
                    if coalescer is not None and all(mergeable(each) for each in rows):
                        return await coalescer.submit(rows)
                    return await send(rows)
                except Exception as error:  # noqa: BLE001 - Triton's errors, waited out or translated
                    delay = reload_delay(RELOAD_FIRST_BACKOFF_SECS, attempt)
                    if not reloading(error) or loop.time() + delay > deadline:
                        raise blame(error, indices, subject, about_query) from None
                await asyncio.sleep(delay)
                attempt += 1

        answers = await gather([run(indices) for indices in groups])
        return assemble(groups, answers, TOKEN_COUNT_NAME in info.outputs)
