"""perf.ab's pure parts: the alternation order, the ratios and their spread, its arguments."""

from __future__ import annotations

import pytest

from perf.ab import REF, WORK, Run, Side, alternation_order, parse_args, point_results, ratio_spread


def test_order_flips_every_alternation():
    assert [alternation_order(i) for i in range(4)] == [(REF, WORK), (WORK, REF), (REF, WORK), (WORK, REF)]


def test_ratio_is_working_over_ref_per_alternation_with_median_and_range():
    spread = ratio_spread([100.0, 200.0, 50.0], [110.0, 180.0, 50.0])
    assert spread["ratios"] == [1.1, 0.9, 1.0]
    assert (spread["ratio_median"], spread["ratio_min"], spread["ratio_max"]) == (1.0, 0.9, 1.1)


def test_a_failed_run_drops_its_pair_and_no_pair_gives_no_ratio():
    assert ratio_spread([100.0, 0.0], [90.0, 120.0])["ratios"] == [0.9]
    assert ratio_spread([0.0], [100.0]) == {
        "ratios": [],
        "ratio_median": None,
        "ratio_min": None,
        "ratio_max": None,
    }


def test_runs_are_paired_by_alternation_per_point():
    runs = [
        Run(REF, 0, "text_200", 16, throughput=100.0, cpu_ms_per_request=10.0),
        Run(WORK, 0, "text_200", 16, throughput=80.0, cpu_ms_per_request=8.0),
        Run(WORK, 1, "text_200", 16, throughput=120.0),
        Run(REF, 1, "text_200", 16, throughput=100.0),
        Run(REF, 2, "text_200", 16, throughput=100.0),  # its pair never ran: left out
        Run(REF, 0, "text_200", 4, throughput=50.0),
        Run(WORK, 0, "text_200", 4, throughput=50.0),
    ]
    first, second = point_results(runs)
    assert (first.concurrency, first.ref, first.work, first.ratios) == (
        16,
        [100.0, 100.0],
        [80.0, 120.0],
        [0.8, 1.2],
    )
    assert first.ratio_median == 1.0
    assert (first.ref_cpu_ms, first.work_cpu_ms, first.cpu_ratios) == ([10.0, 0.0], [8.0, 0.0], [0.8])
    assert (second.concurrency, second.ratios) == (4, [1.0])


def test_defaults_are_one_short_point_three_times():
    args = parse_args(["ed6213f"])
    assert (args.ref, args.workloads, args.concurrency, args.alternations) == (
        "ed6213f",
        ["text_200"],
        [16],
        3,
    )
    args = parse_args(
        ["HEAD", "--workloads", "text_200,image_448", "--concurrency", "1,16", "--alternations", "5"]
    )
    assert (args.workloads, args.concurrency, args.alternations) == (["text_200", "image_448"], [1, 16], 5)


@pytest.mark.parametrize(
    "argv",
    [[], ["HEAD", "--workloads", "nope"], ["HEAD", "--concurrency", "0"], ["HEAD", "--alternations", "0"]],
)
def test_bad_arguments_are_refused(argv):
    with pytest.raises(SystemExit):
        parse_args(argv)


def test_each_tree_is_served_with_the_instances_its_own_make_serve_chooses(tmp_path):
    """A tree with tools/repository.py gets its CPU-host choice (0, auto); an older one its repository as it
    is (None), as its `make serve` served it."""
    side = Side("ref", "abc", tmp_path, tmp_path / ".venv")
    assert side.model_instances is None
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "repository.py").write_text("")
    assert side.model_instances == 0
