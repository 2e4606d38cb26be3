"""The bulk job's way to the server: ``EmbeddingClient`` (its batching, retries and backoff), with the
concurrency cut in half whenever the server stays UNAVAILABLE through the client's retries and grown back
one request at a time after clean chunks, and every other failure pinned on an item instead of ending the
job."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np

from qwen3vl_client.bulk.job import EmbedOutcome
from qwen3vl_client.client import EmbeddingClient
from qwen3vl_client.errors import ItemError, RequestError, ServerUnavailableError
from qwen3vl_client.items import Item

MAX_WAIT = 60.0  # the longest pause while the server is unavailable
REQUEST_ATTEMPTS = 3  # a chunk failing otherwise is tried this often before its items go one by one
GROW_AFTER = 4  # clean chunks before one more request may be in flight


class ClientEmbedder:
    """``embed(items, dimensions)`` that never gives up on an unavailable server and never raises for one
    bad item. ``make_client(concurrency)`` opens a client with that many requests in flight."""

    def __init__(
        self,
        make_client: Callable[[int], EmbeddingClient],
        concurrency: int,
        sleep: Callable[[float], None] = time.sleep,
        log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
    ):
        self.make_client = make_client
        self.limit = self.concurrency = concurrency
        self.sleep = sleep
        self.log = log
        self.client: EmbeddingClient | None = None
        self.clean = 0
        self.wait = 1.0

    def twin(self) -> ClientEmbedder:
        """An embedder like this one with a client of its own, for a second chunk embedded at once."""
        return ClientEmbedder(self.make_client, self.limit, self.sleep, self.log)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def _connected(self) -> EmbeddingClient:
        if self.client is None:
            self.client = self.make_client(self.concurrency)
        return self.client

    def _back_off(self, error: Exception) -> None:
        self.close()
        self.concurrency = max(1, self.concurrency // 2)
        self.clean = 0
        self.log(f"server unavailable ({error}); {self.concurrency} in flight, again in {self.wait:.0f} s")
        self.sleep(self.wait)
        self.wait = min(MAX_WAIT, self.wait * 2)

    def _succeeded(self) -> None:
        self.wait = 1.0
        self.clean += 1
        if self.clean >= GROW_AFTER and self.concurrency < self.limit:
            self.close()
            self.concurrency += 1
            self.clean = 0

    def embed(self, items: list[Item], dimensions: int) -> EmbedOutcome:
        attempts = 0
        while True:
            try:
                result = self._connected().embed(items, dimensions=dimensions or None, on_error="skip")
            except ServerUnavailableError as error:
                self._back_off(error)
                continue
            except (RequestError, ItemError) as error:
                attempts += 1
                if attempts < REQUEST_ATTEMPTS:
                    self.close()
                    self.sleep(min(MAX_WAIT, 2.0**attempts))
                    continue
                if len(items) == 1:
                    reason = error.reason if isinstance(error, (RequestError, ItemError)) else str(error)
                    return EmbedOutcome(np.zeros((1, 0), dtype=np.float32), None, {0: reason})
                return self._one_by_one(items, dimensions)
            self._succeeded()
            counts = None if result.token_counts is None else [int(count) for count in result.token_counts]
            return EmbedOutcome(
                result.embeddings, counts, {error.index: error.reason for error in result.errors}
            )

    def _one_by_one(self, items: list[Item], dimensions: int) -> EmbedOutcome:
        outcomes = [self.embed([item], dimensions) for item in items]
        width = max(outcome.vectors.shape[1] for outcome in outcomes)
        vectors = np.full((len(items), width), np.nan, dtype=np.float32)
        errors: dict[int, str] = {}
        counts = [outcome.token_counts[0] if outcome.token_counts else -1 for outcome in outcomes]
        for row, outcome in enumerate(outcomes):
            if 0 in outcome.errors:
                errors[row] = outcome.errors[0]
            else:
                vectors[row, : outcome.vectors.shape[1]] = outcome.vectors[0]
        return EmbedOutcome(vectors, counts if any(count >= 0 for count in counts) else None, errors)
