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
    OUTPUT_NAME,
    PROBE_TEXT,
    Collector,
    EmbeddingResult,
    Fail,
    Health,
    OnError,
    Progress,
    Retry,
    Transport,
    as_dict,
    build_inputs,
    error_message,
    make_options,
    model_summary,
    next_step,
)
from qwen3vl_client.errors import ItemError
from qwen3vl_client.items import (
    Batch,
    ImageInput,
    Item,
    VideoInput,
    check_dimensions,
    collect_items,
    plan_batches,
)

Waiter = Callable[[], np.ndarray]
# A host that swallows packets should not hold a call for the whole request timeout.
CONNECT_TIMEOUT = 30.0


class EmbeddingClient:
    """Embeds text, images, videos and mixed items through the Triton server; not thread-safe.

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
    ) -> None:
        self.options = make_options(
            url, protocol, model, batch_size, max_concurrency, timeout, retries, backoff, max_request_bytes
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
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        check_dimensions(dimensions)
        collected = collect_items(items, texts, images, videos)
        result = self._run(collected, instruction, dimensions, on_error, progress)
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

    def _submit(self, batch: Batch) -> Waiter:
        """Start one request; the returned function waits for its ``EMBEDDING``."""
        options = self.options
        try:
            inputs = build_inputs(self._module, batch.rows)
            if options.protocol == "http":
                greenlet = self._pool.spawn(_outcome, self._client.infer, options.model, inputs)
                return lambda: _unwrap(greenlet.get()).as_numpy(OUTPUT_NAME)
            future: Future[np.ndarray] = Future()

            def done(result: Any, error: BaseException | None) -> None:
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result.as_numpy(OUTPUT_NAME))

            self._client.async_infer(options.model, inputs, callback=done, client_timeout=options.timeout)
            return future.result
        except Exception as error:  # noqa: BLE001 - raised when waited for, like a server error
            failure = error

            def failed() -> np.ndarray:
                raise failure

            return failed

    def _run(
        self,
        items: list[Item],
        instruction: str | None,
        dimensions: int | None,
        on_error: OnError,
        progress: Progress | None,
    ) -> EmbeddingResult:
        options = self.options
        collector = Collector(len(items), on_error, progress)
        planned = plan_batches(items, instruction, dimensions, options.batch_size, options.max_request_bytes)
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
                in_flight.append((batch, attempt, self._submit(batch)))
            if not in_flight:
                return collector.result()
            batch, attempt, wait = in_flight.popleft()
            try:
                embedding = wait()
            except Exception as error:  # noqa: BLE001 - next_step re-raises what it does not handle
                step = next_step(error, batch, attempt, options, on_error, self._connection_errors)
                if isinstance(step, Retry):
                    time.sleep(step.delay)
                    waiting.appendleft((batch, attempt + 1))
                elif isinstance(step, Fail):
                    collector.fail(step.error)
                else:
                    waiting.extendleft((single, 0) for single in reversed(step.batches))
            else:
                collector.done(batch, embedding)


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
