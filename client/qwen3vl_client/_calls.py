"""One ``embed`` or ``rerank`` call as data: the endpoint it calls, its planned requests (files are read
as they are due), where per-item results land, and what a failed request leads to. The clients only
send the requests."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from qwen3vl_client._retry import Fail, Retry, Waits, next_step
from qwen3vl_client._wire import Endpoint, embedding_endpoint, rerank_endpoint, split_counts, split_rows
from qwen3vl_client.errors import ItemError
from qwen3vl_client.items import Batch, Item, Row, collect_items, plan_batches
from qwen3vl_client.options import Options
from qwen3vl_client.results import EmbeddingResult, RerankResult

OnError = Literal["raise", "skip"]
Progress = Callable[[int], object]


def check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def rerank_items(
    query: Item | str,
    documents: Iterable[Item | str] | Item | str,
    instruction: str | None,
    top_k: int | None,
) -> tuple[Item, list[Item]]:
    """The query and documents of a ``rerank`` call as items, checked before anything is sent."""
    if isinstance(query, str):
        query = Item(text=query)
    if not isinstance(query, Item):
        raise TypeError(f"query must be a str or an Item, got {type(query).__name__}")
    if not (query.text or query.images or query.videos):
        raise ValueError("the query has no content: give it text, images or videos")
    if instruction is not None and not isinstance(instruction, str):
        raise TypeError(f"instruction must be a str, got {type(instruction).__name__}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
    items = collect_items(documents)
    for name, item in [("the query", query)] + [(f"document {i}", item) for i, item in enumerate(items)]:
        for field in ("instruction", "dimensions"):
            if getattr(item, field) is not None:
                raise ValueError(
                    f"{name} sets {field}, which reranking does not use"
                    + (": pass rerank(..., instruction=...)" if field == "instruction" else "")
                )
    return query, items


class Collector:
    """Per-item values (vectors, scores) and errors by input index, reported to ``progress`` as items
    finish; ``split`` cuts a request's output into its items' values."""

    def __init__(
        self,
        count: int,
        on_error: OnError,
        progress: Progress | None,
        split: Callable[[np.ndarray, Sequence[Row]], list[Any]] = split_rows,
    ):
        self.values: list[Any] = [None] * count
        self.token_counts: np.ndarray | None = None  # int32 per item, -1 until answered; None: not reported
        self.errors: list[ItemError] = []
        self.on_error = on_error
        self.progress = progress
        self.split = split

    def done(self, batch: Batch, output: np.ndarray, counts: np.ndarray | None = None) -> None:
        for index, value in zip(batch.indices, self.split(output, batch.rows)):
            self.values[index] = value
        if counts is not None:
            if self.token_counts is None:
                self.token_counts = np.full(len(self.values), -1, dtype=np.int32)
            self.token_counts[list(batch.indices)] = split_counts(counts, len(batch.rows))
        self._advance(len(batch))

    def fail(self, error: ItemError) -> None:
        if self.on_error == "raise":
            raise error
        self.errors.append(error)
        self._advance(1)

    def _advance(self, count: int) -> None:
        if self.progress is not None:
            self.progress(count)

    def sorted_errors(self) -> tuple[ItemError, ...]:
        return tuple(sorted(self.errors, key=lambda error: error.index))

    def result(self) -> EmbeddingResult:
        width = max((vector.shape[0] for vector in self.values if vector is not None), default=0)
        embeddings = np.full((len(self.values), width), np.nan, dtype=np.float32)
        for index, vector in enumerate(self.values):
            if vector is not None:
                # Items that asked for fewer dimensions than others are zero-padded, as the server does.
                embeddings[index] = 0.0
                embeddings[index, : vector.shape[0]] = vector
        return EmbeddingResult(embeddings, self.sorted_errors(), self.token_counts)

    def rerank_result(self, top_k: int | None) -> RerankResult:
        scores = np.array([np.nan if score is None else score for score in self.values], dtype=np.float32)
        scored = np.flatnonzero(~np.isnan(scores))
        # Stable: equal scores keep input order.
        order = scored[np.argsort(-scores[scored], kind="stable")][:top_k]
        return RerankResult(scores, order, self.sorted_errors())


@dataclass(frozen=True)
class Call:
    """One ``embed`` or ``rerank`` call: the model it calls, its planned requests and where the results
    land."""

    options: Options
    endpoint: Endpoint
    planned: Iterator[Batch | ItemError]
    collector: Collector
    # The client's: which models have answered it, since when each retried request has been failing.
    waits: Waits = dataclasses.field(default_factory=Waits)

    def done(self, batch: Batch, output: np.ndarray, counts: np.ndarray | None = None) -> None:
        """``batch`` was answered with ``output`` (and ``counts``, its rows' TOKEN_COUNT, when reported)."""
        self.waits.done(batch, self.endpoint.model)
        self.collector.done(batch, output, counts)

    def after_failure(
        self,
        error: BaseException,
        batch: Batch,
        attempt: int,
        connection_errors: tuple[type[BaseException], ...],
    ) -> tuple[float, list[tuple[Batch, int]]]:
        """The pause before sending again and what to send, first first (each batch with its attempt
        number): the batch again after a backoff, or its items one by one. A bad item is recorded in the
        collector; an error that ends the call is raised."""
        on_error = self.collector.on_error
        step = next_step(
            error, batch, attempt, self.options, on_error, connection_errors, self.endpoint, self.waits
        )
        if isinstance(step, Retry):
            return step.delay, [(batch, attempt + 1)]
        if isinstance(step, Fail):
            self.collector.fail(step.error)
            return 0.0, []
        return 0.0, [(single, 0) for single in step.batches]


def embed_call(
    options: Options,
    items: list[Item],
    instruction: str | None,
    dimensions: int | None,
    on_error: OnError,
    progress: Progress | None,
    waits: Waits | None = None,
) -> Call:
    endpoint = embedding_endpoint(options)
    planned = plan_batches(items, instruction, dimensions, options.batch_size, options.max_request_bytes)
    collector = Collector(len(items), on_error, progress, endpoint.split)
    return Call(options, endpoint, planned, collector, waits or Waits())


def rerank_call(
    options: Options,
    query: Item,
    query_row: Row,
    documents: list[Item],
    instruction: str | None,
    on_error: OnError,
    progress: Progress | None,
    waits: Waits | None = None,
) -> Call:
    """``query_row`` is the query as sent (its files read once); every request repeats it."""
    endpoint = rerank_endpoint(options, query, query_row, instruction)
    planned = plan_batches(
        documents, None, None, options.batch_size, options.max_request_bytes, row_overhead=query_row.nbytes
    )
    collector = Collector(len(documents), on_error, progress, endpoint.split)
    return Call(options, endpoint, planned, collector, waits or Waits())
