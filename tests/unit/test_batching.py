import random

from backend.runtime.batching import BatchLimits, padded_tokens, plan_micro_batches


def test_every_row_lands_in_exactly_one_micro_batch_within_budget():
    rng = random.Random(7)
    lengths = [rng.randint(8, 2048) for _ in range(300)]
    limits = BatchLimits(token_budget=8192, max_rows=32, vision_patch_budget=10**9)
    plan = plan_micro_batches(lengths, [0] * len(lengths), limits)
    assert sorted(index for batch in plan for index in batch) == list(range(len(lengths)))
    for batch in plan:
        assert len(batch) <= 32
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 8192


def test_sorting_by_length_keeps_padding_small():
    rng = random.Random(3)
    lengths = [int(rng.paretovariate(1.2) * 20) % 2048 + 8 for _ in range(500)]
    plan = plan_micro_batches(lengths, [0] * len(lengths), BatchLimits(16384, 64, 10**9))
    assert padded_tokens(lengths, plan) / sum(lengths) < 1.15


def test_a_row_over_budget_runs_alone_and_vision_budget_splits():
    plan = plan_micro_batches([10, 50_000, 10], [0, 0, 0], BatchLimits(1000, 8, 10**9))
    assert sorted(plan) == [[0, 2], [1]]
    plan = plan_micro_batches([10, 10, 10], [600, 600, 600], BatchLimits(1000, 8, 1000))
    assert len(plan) == 3
