"""A request's items cut into Triton calls and its answers put back together: calls of at most the
ensemble's max_batch_size rows (token-id rows alone), which rows may merge with other requests' calls,
every call at once, and one value and token count per item, in the request's order."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from qwen3vl_client._wire import Pair
from qwen3vl_client.items import Row

T = TypeVar("T")


@dataclass(frozen=True)
class Outcome:
    values: list[Any]  # vectors or scores, one per item
    token_counts: list[int] | None  # None when the ensemble has no TOKEN_COUNT output


def call_groups(count: int, max_batch_size: int, alone: Sequence[int] = ()) -> list[list[int]]:
    """The indices of a request's ``count`` items, one list per call; ``alone`` go one per call (token-id
    rows: no padding to agree on) after the others (max_batch_size 0 = no limit)."""
    skip = set(alone)
    plain = [index for index in range(count) if index not in skip]
    size = max_batch_size or max(len(plain), 1)
    return [plain[start : start + size] for start in range(0, len(plain), size)] + [[i] for i in alone]


def mergeable(row: Row | Pair) -> bool:
    """Media rows take their preprocessing time with them into a merged call: texts would wait for them.
    Token-id rows travel alone."""
    sides = (row.query, row.document) if isinstance(row, Pair) else (row,)
    return not any(side.images or side.videos or side.token_ids is not None for side in sides)


# UTF-8 bytes per token, for an estimate of a text row's work before it is tokenised: ~4 for English with
# Qwen's tokenizer (fewer for CJK, whose rows the estimate then undercounts by up to ~2x).
BYTES_PER_TOKEN = 4


def estimated_tokens(row: Row | Pair) -> int:
    """A mergeable row's tokens, estimated from its text and instruction bytes (at least 1)."""
    sides = (row.query, row.document) if isinstance(row, Pair) else (row,)
    size = sum(len(side.text) + len(side.instruction) for side in sides)
    if isinstance(row, Pair):
        size += len(row.instruction)
    return max(1, size // BYTES_PER_TOKEN)


async def gather(calls: list[Awaitable[T]]) -> list[T]:
    """All calls at once; the first failure (in call order) is raised after the others have finished."""
    if len(calls) == 1:
        # The usual request fits one batch: awaited in place, no task, no gather future.
        return [await calls[0]]
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return cast(list[T], results)  # no exception among them


def assemble(groups: list[list[int]], answers: list[list[tuple[Any, int]]], counted: bool) -> Outcome:
    """Each call's (value, token count) per row back at its item's index."""
    values: list[Any] = [None] * sum(len(indices) for indices in groups)
    counts = [0] * len(values)
    for indices, answer in zip(groups, answers):
        for index, (value, count) in zip(indices, answer):
            values[index], counts[index] = value, count
    return Outcome(values, counts if counted else None)
