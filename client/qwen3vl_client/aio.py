"""The asyncio client: ``async with AsyncEmbeddingClient(url) as client: await client.embed(...)``
(and ``await client.rerank(query, documents)``)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import replace
from types import ModuleType, TracebackType
from typing import Any, Literal, overload

import numpy as np

from qwen3vl_client._core import (
    DEFAULT_BACKOFF,
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_QUERY_TASK,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    MODEL_NAME,
    PROBE_TEXT,
    RERANKER_MODEL_NAME,
    Call,
    EmbeddingResult,
    Endpoint,
    Fail,
    Health,
    OnError,
    Options,
    Progress,
    RerankResult,
    Retry,
    Transport,
    as_dict,
    capped,
    check_on_error,
    embed_call,
    error_message,
    make_options,
    model_summary,
    next_step,
    rerank_call,
    rerank_items,
)
from qwen3vl_client.errors import ItemError
from qwen3vl_client.items import (
    Batch,
    ImageInput,
    Item,
    VideoInput,
    check_dimensions,
    collect_items,
    encode_row,
)


class AsyncEmbeddingClient:
    """``EmbeddingClient`` for asyncio (``tritonclient.http.aio`` / ``tritonclient.grpc.aio``).

    Same arguments and behaviour; the connection opens on first use inside the running loop. Use it
    from one event loop, and ``await close()`` it or use ``async with``.
    """

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
        )
        self._client: Any = None
        self._module: ModuleType | None = None
        self._connection_errors: tuple[type[BaseException], ...] = (ConnectionError,)
        self._max_batch: dict[str, int] = {}

    async def _options_for(self, model: str) -> Options:
        """See ``EmbeddingClient._options_for``."""
        if model not in self._max_batch:
            try:
                config = as_dict(await self._connect().get_model_config(model))
                self._max_batch[model] = model_summary(config)["max_batch_size"]
            except Exception:  # noqa: BLE001
                return self.options
        return capped(self.options, self._max_batch[model])

    def __repr__(self) -> str:
        return f"AsyncEmbeddingClient({self.options.url!r}, protocol={self.options.protocol!r})"

    def _connect(self) -> Any:
        # aiohttp's session must be made inside the running loop, so not in __init__.
        if self._client is None:
            options = self.options
            if options.protocol == "http":
                import aiohttp
                import tritonclient.http.aio as module

                self._client = module.InferenceServerClient(
                    options.url, conn_limit=options.max_concurrency, conn_timeout=options.timeout
                )
                self._connection_errors = (ConnectionError, aiohttp.ClientConnectionError)
            else:
                import tritonclient.grpc.aio as module  # type: ignore[no-redef]

                self._client = module.InferenceServerClient(options.url)
            self._module = module
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def __aenter__(self) -> AsyncEmbeddingClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @overload
    async def embed(
        self,
        items: Iterable[Item | str] | None = None,
        *,
        texts: str | Iterable[str] | None = None,
        images: ImageInput | Iterable[ImageInput] | None = None,
        videos: VideoInput | Iterable[VideoInput] | None = None,
        instruction: str | None = None,
        dimensions: int | None = None,
        on_error: Literal["raise"] = "raise",
        progress: Progress | None = None,
    ) -> np.ndarray: ...

    @overload
    async def embed(
        self,
        items: Iterable[Item | str] | None = None,
        *,
        texts: str | Iterable[str] | None = None,
        images: ImageInput | Iterable[ImageInput] | None = None,
        videos: VideoInput | Iterable[VideoInput] | None = None,
        instruction: str | None = None,
        dimensions: int | None = None,
        on_error: Literal["skip"],
        progress: Progress | None = None,
    ) -> EmbeddingResult: ...

    async def embed(
        self,
        items: Iterable[Item | str] | None = None,
        *,
        texts: str | Iterable[str] | None = None,
        images: ImageInput | Iterable[ImageInput] | None = None,
        videos: VideoInput | Iterable[VideoInput] | None = None,
        instruction: str | None = None,
        dimensions: int | None = None,
        on_error: OnError = "raise",
        progress: Progress | None = None,
    ) -> np.ndarray | EmbeddingResult:
        """See ``EmbeddingClient.embed``."""
        check_on_error(on_error)
        check_dimensions(dimensions)
        collected = collect_items(items, texts, images, videos)
        options = await self._options_for(self.options.model)
        call = embed_call(options, collected, instruction, dimensions, on_error, progress)
        await self._run(call)
        result = call.collector.result()
        return result if on_error == "skip" else result.embeddings

    @overload
    async def embed_queries(
        self,
        queries: Iterable[Item | str],
        task: str = DEFAULT_QUERY_TASK,
        *,
        dimensions: int | None = None,
        on_error: Literal["raise"] = "raise",
        progress: Progress | None = None,
    ) -> np.ndarray: ...

    @overload
    async def embed_queries(
        self,
        queries: Iterable[Item | str],
        task: str = DEFAULT_QUERY_TASK,
        *,
        dimensions: int | None = None,
        on_error: Literal["skip"],
        progress: Progress | None = None,
    ) -> EmbeddingResult: ...

    async def embed_queries(
        self,
        queries: Iterable[Item | str],
        task: str = DEFAULT_QUERY_TASK,
        *,
        dimensions: int | None = None,
        on_error: OnError = "raise",
        progress: Progress | None = None,
    ) -> np.ndarray | EmbeddingResult:
        """See ``EmbeddingClient.embed_queries``."""
        if isinstance(queries, str):
            queries = [queries]
        return await self.embed(  # type: ignore[call-overload, no-any-return]
            queries, instruction=task, dimensions=dimensions, on_error=on_error, progress=progress
        )

    async def rerank(
        self,
        query: Item | str,
        documents: Iterable[Item | str],
        *,
        instruction: str | None = None,
        top_k: int | None = None,
        on_error: OnError = "raise",
        progress: Progress | None = None,
    ) -> RerankResult:
        """See ``EmbeddingClient.rerank``."""
        check_on_error(on_error)
        query_item, items = rerank_items(query, documents, instruction, top_k)
        query_row = await asyncio.to_thread(encode_row, query_item, None, None)
        options = await self._options_for(self.options.reranker_model)
        call = rerank_call(options, query_item, query_row, items, instruction, on_error, progress)
        await self._run(call)
        return call.collector.rerank_result(top_k)

    async def health(self, probe: bool = True) -> Health:
        """See ``EmbeddingClient.health``."""
        options = self.options
        base: dict[str, Any] = {"url": options.url, "protocol": options.protocol, "model": options.model}
        try:
            client = self._connect()
            server = {
                "server_live": bool(await client.is_server_live()),
                "server_ready": bool(await client.is_server_ready()),
                "server_version": as_dict(await client.get_server_metadata()).get("version"),
                "model_ready": bool(await client.is_model_ready(options.model)),
            }
            summary = {}
            if server["model_ready"]:
                summary = model_summary(as_dict(await client.get_model_config(options.model)))
                names = summary.pop("step_names")
                summary["steps"] = tuple([(name, bool(await client.is_model_ready(name))) for name in names])
        except Exception as error:  # noqa: BLE001 - any failure is reported, not raised
            return Health(**base, error=error_message(error))
        health = Health(**base, **server, **summary)
        if not (probe and health.model_ready):
            return health
        started = time.perf_counter()
        try:
            vector = await self.embed([PROBE_TEXT])
        except Exception as error:  # noqa: BLE001
            return replace(health, error=f"probe embedding failed: {error}")
        return replace(health, dimensions=int(vector.shape[1]), probe_seconds=time.perf_counter() - started)

    async def _infer(self, batch: Batch, endpoint: Endpoint) -> np.ndarray:
        client = self._connect()
        inputs = endpoint.build_inputs(self._module, batch.rows)  # type: ignore[arg-type]
        if self.options.protocol == "http":
            result = await client.infer(endpoint.model, inputs)
        else:
            result = await client.infer(endpoint.model, inputs, client_timeout=self.options.timeout)
        return result.as_numpy(endpoint.output)  # type: ignore[no-any-return]

    async def _run(self, call: Call) -> None:
        """Send the call's planned requests, ``max_concurrency`` at a time, into its collector."""
        planned, collector = call.planned, call.collector
        slots = asyncio.Semaphore(self.options.max_concurrency)
        failures: list[BaseException] = []
        tasks: list[asyncio.Task[None]] = []
        try:
            while not failures:
                # Files are read in a thread so that big videos do not stall the loop.
                planned_next = await asyncio.to_thread(next, planned, None)
                if planned_next is None:
                    break
                if isinstance(planned_next, ItemError):
                    collector.fail(planned_next)
                    continue
                await slots.acquire()
                if failures:
                    slots.release()
                    break
                request = self._send(planned_next, call, slots, failures)
                tasks.append(asyncio.create_task(request))
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _send(
        self,
        batch: Batch,
        call: Call,
        slots: asyncio.Semaphore,
        failures: list[BaseException],
    ) -> None:
        """One planned request, with its retries and, when it must be split, its items one by one."""
        endpoint, collector, on_error = call.endpoint, call.collector, call.collector.on_error
        queue: deque[tuple[Batch, int]] = deque([(batch, 0)])
        try:
            while queue:
                current, attempt = queue.popleft()
                try:
                    output = await self._infer(current, endpoint)
                except Exception as error:  # noqa: BLE001 - next_step re-raises what it does not handle
                    connection_errors = self._connection_errors
                    step = next_step(
                        error, current, attempt, self.options, on_error, connection_errors, endpoint
                    )
                    if isinstance(step, Retry):
                        await asyncio.sleep(step.delay)
                        queue.appendleft((current, attempt + 1))
                    elif isinstance(step, Fail):
                        collector.fail(step.error)
                    else:
                        queue.extendleft((single, 0) for single in reversed(step.batches))
                else:
                    collector.done(current, output)
        except BaseException as error:
            failures.append(error)
            raise
        finally:
            slots.release()
