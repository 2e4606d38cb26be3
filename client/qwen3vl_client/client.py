"""The blocking client: ``EmbeddingClient(url, protocol="http"|"grpc").embed(...)``. What each method does
is planned in ``_plans``; this module performs the plans' operations by blocking."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
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

Waiter = Callable[[], tuple[np.ndarray, np.ndarray | None]]  # the output and its TOKEN_COUNT
# A host that swallows packets should not hold a call for the whole request timeout.
CONNECT_TIMEOUT = 30.0


class EmbeddingClient(ClientCore):
    """Embeds text, images, videos and mixed items through the Triton server, and reranks documents
    against a query (``reranker_model``); not thread-safe.

    ``EmbeddingClient(url=None, protocol="http", *, model, batch_size, max_concurrency, timeout, retries,
    backoff, max_request_bytes, reranker_model, reload_wait, priority)``. ``priority="bulk"`` marks every
    request as bulk work (an indexing job's), which the server serves after interactive requests and never
    starves (docs/indexing.md, "Priority"). Large inputs go out as requests of ``batch_size``
    items (and at most ``max_request_bytes``), ``max_concurrency`` of them in flight, results in input
    order. UNAVAILABLE answers and failed connections are retried ``retries`` times with exponential
    backoff from ``backoff`` seconds; ``timeout`` bounds each request. A model being reloaded (its stub
    died) or a restarting server (one that has served this client) is waited for up to ``reload_wait``
    seconds (default 60; 0: not), polled at most half a second apart. Use one client per thread
    (tritonclient's HTTP client is gevent-based), and close it, or use it as a context manager.
    """

    def _open(self) -> None:
        options = self.options
        if options.protocol == "http":
            import gevent.pool
            import tritonclient.http as module
            from geventhttpclient.response import HTTPConnectionClosed

            self._client: Any = module.InferenceServerClient(
                options.url,
                concurrency=options.max_concurrency,
                connection_timeout=min(options.timeout, CONNECT_TIMEOUT),
                network_timeout=options.timeout,
            )
            # Our own greenlets rather than async_infer's: a request that raises inside one of those
            # is also printed to stderr by gevent's hub, which is noise for a retried connection error.
            self._pool: Any = gevent.pool.Pool(options.max_concurrency)
            self._connection_errors = (ConnectionError, HTTPConnectionClosed)
        else:
            import tritonclient.grpc as module

            self._client = module.InferenceServerClient(options.url, channel_args=GRPC_CHANNEL_ARGS)
        self._module = module

    def close(self) -> None:
        if self.options.protocol == "http":
            self._pool.kill()
        self._client.close()

    def __enter__(self) -> EmbeddingClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @overload
    def embed(
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
    def embed(
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

    def embed(
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
        """Embed ``items`` (``Item``s or strings), then one item per text, per image, per video.

        Returns float32 ``[n, d]`` in input order, L2-normalised, ``d`` = ``dimensions`` (Matryoshka;
        default: full). ``instruction`` is the task for queries; ``None`` gives documents' default.
        ``on_error="raise"`` raises ``ItemError`` naming the first bad item; ``"skip"`` embeds the rest
        and returns an ``EmbeddingResult`` listing the bad ones. ``progress(n)`` is called as items finish.
        """
        plan = self._embed_plan(items, texts, images, videos, instruction, dimensions, on_error, progress)
        return self._drive(plan)

    @overload
    def embed_queries(
        self,
        queries: Iterable[Item | str],
        task: str = DEFAULT_QUERY_TASK,
        *,
        dimensions: int | None = None,
        on_error: Literal["raise"] = "raise",
        progress: Progress | None = None,
    ) -> np.ndarray: ...

    @overload
    def embed_queries(
        self,
        queries: Iterable[Item | str],
        task: str = DEFAULT_QUERY_TASK,
        *,
        dimensions: int | None = None,
        on_error: Literal["skip"],
        progress: Progress | None = None,
    ) -> EmbeddingResult: ...

    def embed_queries(
        self,
        queries: Iterable[Item | str],
        task: str = DEFAULT_QUERY_TASK,
        *,
        dimensions: int | None = None,
        on_error: OnError = "raise",
        progress: Progress | None = None,
    ) -> np.ndarray | EmbeddingResult:
        """Embed queries with a one-sentence ``task`` as their instruction (Qwen3-VL-Embedding's
        convention; the server strips it and ends it with a period). Documents go through ``embed``
        without an instruction."""
        return self._drive(self._embed_queries_plan(queries, task, dimensions, on_error, progress))

    def rerank(
        self,
        query: Item | str,
        documents: Iterable[Item | str],
        *,
        instruction: str | None = None,
        top_k: int | None = None,
        on_error: OnError = "raise",
        progress: Progress | None = None,
    ) -> RerankResult:
        """Score each document's relevance to ``query`` with the reranker (one (query, document) pair
        per row; the query and each document are a str or an ``Item`` of text, images and videos).

        ``instruction`` is the task (default: the reranker's, "Given a search query, retrieve relevant
        candidates that answer the query."). Returns a ``RerankResult``: ``scores`` in input order and
        ``order``, the document indices best first (at most ``top_k``); ``result.top()`` gives
        ``[(index, score), ...]``. Requests, retries and errors work as in ``embed``: ``on_error="raise"``
        raises ``ItemError`` naming the first bad document, ``"skip"`` scores the rest (NaN for the bad
        ones, listed in ``errors``). A query the server rejects fails the call with a ``RequestError``
        (also when skipping), an unreadable query file with ``OSError``; ``instruction`` or ``dimensions``
        set on an item raise ``ValueError`` before anything is sent.
        """
        return self._drive(self._rerank_plan(query, documents, instruction, top_k, on_error, progress))

    def health(self, probe: bool = True) -> Health:
        """Server and model readiness, the model's configuration and (``probe``) its full dimension;
        ``reranker``: the reranker model's readiness and configuration."""
        return self._drive(self._health_plan(probe))

    def _drive(self, plan: Plan[T]) -> T:
        """Run ``plan`` to its result, performing each operation it yields."""
        run = Run(plan)
        while (operation := run.next()) is not None:
            try:
                run.answer = self._perform(operation)
            except Exception as error:  # noqa: BLE001 - the plan handles it or lets it through
                run.failure = error
        return run.result

    def _perform(self, operation: Operation) -> Any:
        if isinstance(operation, Ask):
            return getattr(self._client, operation.method)(*operation.args)
        if isinstance(operation, Offload):
            return operation.function(*operation.args)
        return self._run(operation.call)

    def _submit(self, batch: Batch, endpoint: Endpoint) -> Waiter:
        """Start one request; the returned function waits for its output tensor."""
        options = self.options
        try:
            inputs = endpoint.build_inputs(self._module, batch.rows)
            marks = priority_arguments(options.priority)
            if options.protocol == "http":
                greenlet = self._pool.spawn(_outcome, self._client.infer, endpoint.model, inputs, **marks)
                return lambda: read_answer(_unwrap(greenlet.get()), endpoint)
            future: Future[tuple[np.ndarray, np.ndarray | None]] = Future()

            def done(result: Any, error: BaseException | None) -> None:
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(read_answer(result, endpoint))

            self._client.async_infer(
                endpoint.model, inputs, callback=done, client_timeout=options.timeout, **marks
            )
            return future.result
        except Exception as error:  # noqa: BLE001 - raised when waited for, like a server error
            failure = error

            def failed() -> tuple[np.ndarray, np.ndarray | None]:
                raise failure

            return failed

    def _run(self, call: Call) -> None:
        """Send the call's planned requests, ``max_concurrency`` at a time, into its collector."""
        collector = call.collector
        waiting: deque[tuple[Batch, int]] = deque()  # retries and split batches go first
        in_flight: deque[tuple[Batch, int, Waiter]] = deque()
        while True:
            while len(in_flight) < self.options.max_concurrency:
                if waiting:
                    batch, attempt = waiting.popleft()
                else:
                    planned_next = next(call.planned, None)
                    if planned_next is None:
                        break
                    if isinstance(planned_next, ItemError):
                        collector.fail(planned_next)
                        continue
                    batch, attempt = planned_next, 0
                in_flight.append((batch, attempt, self._submit(batch, call.endpoint)))
            if not in_flight:
                return
            batch, attempt, wait = in_flight.popleft()
            try:
                output = wait()
            except Exception as error:  # noqa: BLE001 - after_failure re-raises what it does not handle
                delay, again = call.after_failure(error, batch, attempt, self._connection_errors)
                if delay:
                    time.sleep(delay)
                waiting.extendleft(reversed(again))
            else:
                call.done(batch, *output)


def _outcome(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The call's result, or the exception it raised (returned, so that gevent does not print it)."""
    try:
        return call(*args, **kwargs)
    except Exception as error:  # noqa: BLE001
        return _Raised(error)


class _Raised:
    def __init__(self, error: Exception):
        self.error = error


def _unwrap(outcome: Any) -> Any:
    if isinstance(outcome, _Raised):
        raise outcome.error
    return outcome
