"""The blocking client: ``EmbeddingClient(url, protocol="http"|"grpc").embed(...)``."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
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

Waiter = Callable[[], np.ndarray]
# A host that swallows packets should not hold a call for the whole request timeout.
CONNECT_TIMEOUT = 30.0


class EmbeddingClient:
    """Embeds text, images, videos and mixed items through the Triton server, and reranks documents
    against a query (``reranker_model``); not thread-safe.

    Large inputs go out as requests of ``batch_size`` items (and at most ``max_request_bytes``),
    ``max_concurrency`` of them in flight, results in input order. UNAVAILABLE answers and failed
    connections are retried ``retries`` times with exponential backoff from ``backoff`` seconds;
    ``timeout`` bounds each request. Use one client per thread (tritonclient's HTTP client is
    gevent-based), and close it, or use it as a context manager.
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
        self._module: ModuleType
        self._connection_errors: tuple[type[BaseException], ...]
        if protocol == "http":
            import gevent.pool
            import tritonclient.http as module
            from geventhttpclient.response import HTTPConnectionClosed

            self._client: Any = module.InferenceServerClient(
                self.options.url,
                concurrency=max_concurrency,
                connection_timeout=min(timeout, CONNECT_TIMEOUT),
                network_timeout=timeout,
            )
            # Our own greenlets rather than async_infer's: a request that raises inside one of those
            # is also printed to stderr by gevent's hub, which is noise for a retried connection error.
            self._pool: Any = gevent.pool.Pool(max_concurrency)
            self._connection_errors = (ConnectionError, HTTPConnectionClosed)
        else:
            import tritonclient.grpc as module

            self._client = module.InferenceServerClient(self.options.url)
            self._connection_errors = (ConnectionError,)
        self._module = module
        self._max_batch: dict[str, int] = {}

    def _options_for(self, model: str) -> Options:
        """The options with batch_size capped at ``model``'s max_batch_size, asked of the server once
        (a failed lookup is not remembered: the requests themselves then say what is wrong)."""
        if model not in self._max_batch:
            try:
                config = as_dict(self._client.get_model_config(model))
                self._max_batch[model] = model_summary(config)["max_batch_size"]
            except Exception:  # noqa: BLE001
                return self.options
        return capped(self.options, self._max_batch[model])

    def __repr__(self) -> str:
        return f"EmbeddingClient({self.options.url!r}, protocol={self.options.protocol!r})"

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
        check_on_error(on_error)
        check_dimensions(dimensions)
        collected = collect_items(items, texts, images, videos)
        options = self._options_for(self.options.model)
        call = embed_call(options, collected, instruction, dimensions, on_error, progress)
        self._run(call)
        result = call.collector.result()
        return result if on_error == "skip" else result.embeddings

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
        if isinstance(queries, str):
            queries = [queries]
        return self.embed(  # type: ignore[call-overload, no-any-return]
            queries, instruction=task, dimensions=dimensions, on_error=on_error, progress=progress
        )

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
        check_on_error(on_error)
        query_item, items = rerank_items(query, documents, instruction, top_k)
        query_row = encode_row(query_item, None, None)
        options = self._options_for(self.options.reranker_model)
        call = rerank_call(options, query_item, query_row, items, instruction, on_error, progress)
        self._run(call)
        return call.collector.rerank_result(top_k)

    def health(self, probe: bool = True) -> Health:
        """Server and model readiness, the model's configuration and (``probe``) its full dimension."""
        options = self.options
        base: dict[str, Any] = {"url": options.url, "protocol": options.protocol, "model": options.model}
        try:
            server = {
                "server_live": bool(self._client.is_server_live()),
                "server_ready": bool(self._client.is_server_ready()),
                "server_version": as_dict(self._client.get_server_metadata()).get("version"),
                "model_ready": bool(self._client.is_model_ready(options.model)),
            }
            summary = {}
            if server["model_ready"]:
                summary = model_summary(as_dict(self._client.get_model_config(options.model)))
                names = summary.pop("step_names")
                summary["steps"] = tuple((name, bool(self._client.is_model_ready(name))) for name in names)
        except Exception as error:  # noqa: BLE001 - any failure is reported, not raised
            return Health(**base, error=error_message(error))
        health = Health(**base, **server, **summary)
        model_ready = health.model_ready
        if not (probe and model_ready):
            return health
        started = time.perf_counter()
        try:
            vector = self.embed([PROBE_TEXT])
        except Exception as error:  # noqa: BLE001
            return replace(health, error=f"probe embedding failed: {error}")
        return replace(health, dimensions=int(vector.shape[1]), probe_seconds=time.perf_counter() - started)

    def _submit(self, batch: Batch, endpoint: Endpoint) -> Waiter:
        """Start one request; the returned function waits for its output tensor."""
        options = self.options
        try:
            inputs = endpoint.build_inputs(self._module, batch.rows)
            if options.protocol == "http":
                greenlet = self._pool.spawn(_outcome, self._client.infer, endpoint.model, inputs)
                return lambda: _unwrap(greenlet.get()).as_numpy(endpoint.output)
            future: Future[np.ndarray] = Future()

            def done(result: Any, error: BaseException | None) -> None:
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result.as_numpy(endpoint.output))

            self._client.async_infer(endpoint.model, inputs, callback=done, client_timeout=options.timeout)
            return future.result
        except Exception as error:  # noqa: BLE001 - raised when waited for, like a server error
            failure = error

            def failed() -> np.ndarray:
                raise failure

            return failed

    def _run(self, call: Call) -> None:
        """Send the call's planned requests, ``max_concurrency`` at a time, into its collector."""
        options, endpoint, collector = self.options, call.endpoint, call.collector
        planned, on_error = call.planned, collector.on_error
        waiting: deque[tuple[Batch, int]] = deque()  # retries and split batches go first
        in_flight: deque[tuple[Batch, int, Waiter]] = deque()
        while True:
            while len(in_flight) < options.max_concurrency:
                if waiting:
                    batch, attempt = waiting.popleft()
                else:
                    planned_next = next(planned, None)
                    if planned_next is None:
                        break
                    if isinstance(planned_next, ItemError):
                        collector.fail(planned_next)
                        continue
                    batch, attempt = planned_next, 0
                in_flight.append((batch, attempt, self._submit(batch, endpoint)))
            if not in_flight:
                return
            batch, attempt, wait = in_flight.popleft()
            try:
                output = wait()
            except Exception as error:  # noqa: BLE001 - next_step re-raises what it does not handle
                connection_errors = self._connection_errors
                step = next_step(error, batch, attempt, options, on_error, connection_errors, endpoint)
                if isinstance(step, Retry):
                    time.sleep(step.delay)
                    waiting.appendleft((batch, attempt + 1))
                elif isinstance(step, Fail):
                    collector.fail(step.error)
                else:
                    waiting.extendleft((single, 0) for single in reversed(step.batches))
            else:
                collector.done(batch, output)


def _outcome(call: Callable[..., Any], *args: Any) -> Any:
    """The call's result, or the exception it raised (returned, so that gevent does not print it)."""
    try:
        return call(*args)
    except Exception as error:  # noqa: BLE001
        return _Raised(error)


class _Raised:
    def __init__(self, error: Exception):
        self.error = error


def _unwrap(outcome: Any) -> Any:
    if isinstance(outcome, _Raised):
        raise outcome.error
    return outcome
