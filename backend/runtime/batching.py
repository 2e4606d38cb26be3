"""Packing rows from many requests into micro-batches, and what that costs in padding.

Rows are sorted by length and cut into contiguous runs; the cut points minimise
`sum(rows x longest row) + batch_overhead_tokens x batches` (exact, by dynamic programming over the
sorted rows), subject to the token budget, the row cap and the vision-patch budget. The overhead term is
what one more forward call costs, in tokens: with it, the planner neither pads short rows up to long ones
nor splits a batch into many tiny forwards. A row over the budget on its own still runs, alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchLimits:
    token_budget: int
    max_rows: int
    vision_patch_budget: int
    batch_overhead_tokens: int = 128


def plan_micro_batches(
    lengths: Sequence[int], vision_patches: Sequence[int], limits: BatchLimits
) -> list[list[int]]:
    """Row indices grouped into micro-batches; every index appears exactly once."""
    order = sorted(range(len(lengths)), key=lambda index: (lengths[index], index))
    count = len(order)
    infinity = float("inf")
    best = [0.0] + [infinity] * count  # best[j]: cheapest plan for the first j sorted rows
    cut = [0] * (count + 1)
    for end in range(1, count + 1):
        longest = lengths[order[end - 1]]
        patches = 0
        for start in range(end - 1, max(-1, end - 1 - limits.max_rows), -1):
            rows = end - start
            patches += vision_patches[order[start]]
            if rows > 1 and (rows * longest > limits.token_budget or patches > limits.vision_patch_budget):
                break
            cost = best[start] + rows * longest + limits.batch_overhead_tokens
            if cost < best[end]:
                best[end], cut[end] = cost, start
    batches: list[list[int]] = []
    end = count
    while end > 0:
        batches.append(order[cut[end] : end])
        end = cut[end]
    return batches[::-1]


def padded_tokens(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> int:
    """Tokens the plan computes, padding included (real tokens = sum(lengths))."""
    return sum(len(batch) * max(lengths[index] for index in batch) for batch in batches)
