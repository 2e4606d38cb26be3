"""The asyncio client: ``async with AsyncEmbeddingClient(url) as client: await client.embed(...)``
(and ``await client.rerank(query, documents)``). What each method does is planned in ``_plans``; this
module performs the plans' operations by awaiting."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Literal, overload

import numpy as np

from qwen3vl_client._calls import Call, OnError, Progress
from qwen3vl_client._plans import Ask, ClientCore, Offload, Operation, Plan, Run, T
from qwen3vl_client._retry import GRPC_CHANNEL_ARGS
from qwen3vl_client._wire import Endpoint, priority_arguments, read_answer
from qwen3vl_client.errors import ItemError
from qwen3vl_client.items import Batch, ImageInput, Item, VideoInput
from qwen3vl_client.options import DEFAULT_QUERY_TASK
from qwen3vl_client.results import EmbeddingResult, Health, RerankResult


class AsyncEmbeddingClient(ClientCore):
    """``EmbeddingClient`` for asyncio (``tritonclient.http.aio`` / ``tritonclient.grpc.aio``).

    Same arguments and behaviour; the connection opens on first use inside the running loop. Use it
    from one event loop, and ``await close()`` it or use ``async with``.
    """

    def _open(self) -> None:
        # aiohttp's session must be made inside the running loop: _connect makes it on first use.
        self._client: Any = None
        self._module: Any = None

    def _connect(self) -> Any:
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

                self._client = module.InferenceServerClient(options.url, channel_args=GRPC_CHANNEL_ARGS)
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
        plan = self._embed_plan(items, texts, images, videos, instruction, dimensions, on_error, progress)
        return await self._drive(plan)

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
        return await self._drive(self._embed_queries_plan(queries, task, dimensions, on_error, progress))

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
        return await self._drive(self._rerank_plan(query, documents, instruction, top_k, on_error, progress))

    async def health(self, probe: bool = True) -> Health:
        """See ``EmbeddingClient.health``."""
        return await self._drive(self._health_plan(probe))

    async def _drive(self, plan: Plan[T]) -> T:
        """See ``EmbeddingClient._drive``."""
        run = Run(plan)
        while (operation := run.next()) is not None:
            try:
                run.answer = await self._perform(operation)
            except Exception as error:  # noqa: BLE001 - the plan handles it or lets it through
                run.failure = error
        return run.result

    async def _perform(self, operation: Operation) -> Any:
        if isinstance(operation, Ask):
            return await getattr(self._connect(), operation.method)(*operation.args)
        if isinstance(operation, Offload):
            return await asyncio.to_thread(operation.function, *operation.args)
        return await self._run(operation.call)

    async def _infer(self, batch: Batch, endpoint: Endpoint) -> tuple[np.ndarray, np.ndarray | None]:
        client = self._connect()
        inputs = endpoint.build_inputs(self._module, batch.rows)
        marks = priority_arguments(self.options.priority)
        if self.options.protocol == "http":
            result = await client.infer(endpoint.model, inputs, **marks)
        else:
            result = await client.infer(endpoint.model, inputs, client_timeout=self.options.timeout, **marks)
        return read_answer(result, endpoint)

    async def _run(self, call: Call) -> None:
        """Send the call's planned requests, ``max_concurrency`` at a time, into its collector."""
        slots = asyncio.Semaphore(self.options.max_concurrency)
        failures: list[BaseException] = []
        tasks: list[asyncio.Task[None]] = []
        try:
            while not failures:
                # Files are read in a thread so that big videos do not stall the loop.
                planned_next = await asyncio.to_thread(next, call.planned, None)
                if planned_next is None:
                    break
                if isinstance(planned_next, ItemError):
                    call.collector.fail(planned_next)
                    continue
                await slots.acquire()
                if failures:
                    slots.release()
                    break
                tasks.append(asyncio.create_task(self._send(planned_next, call, slots, failures)))
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _send(
        self, batch: Batch, call: Call, slots: asyncio.Semaphore, failures: list[BaseException]
    ) -> None:
        """One planned request, with its retries and, when it must be split, its items one by one."""
        queue: deque[tuple[Batch, int]] = deque([(batch, 0)])
        try:
            while queue:
                current, attempt = queue.popleft()
                try:
                    output = await self._infer(current, call.endpoint)
                except Exception as error:  # noqa: BLE001 - after_failure re-raises what it does not handle
                    delay, again = call.after_failure(error, current, attempt, self._connection_errors)
                    if delay:
                        await asyncio.sleep(delay)
                    queue.extendleft(reversed(again))
                else:
                    call.done(current, *output)
        except BaseException as error:
            failures.append(error)
            raise
        finally:
            slots.release()
