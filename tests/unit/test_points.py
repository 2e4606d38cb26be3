"""perf.lib.points: the typed point record, read back from points.json (also from a run written before this
module existed) and rendered by perf.lib.summary and perf.accel as a type."""

from __future__ import annotations

import json
import shutil

import pytest

from perf import accel
from perf.lib import summary
from perf.lib.paths import REPO
from perf.lib.pipelines import RERANKER
from perf.lib.points import CustomMetrics, Point, StageStats

RUN = REPO / "perf" / "results" / "cpu-x86_64-2c" / "2026-11-27"


def a_point() -> Point:
    return Point(
        model="tiny",
        workload="rerank_200",
        protocol="http",
        concurrency=4,
        ok=True,
        throughput=50.0,
        stages={RERANKER.model_step: StageStats(inferences=12, executions=4, batch_sizes={1: 1, 8: 3})},
        custom=CustomMetrics(rows=10, tokens=2000, padded_tokens=2200, micro_batches=5),
        ensemble=RERANKER.ensemble,
    )


def test_a_point_survives_points_json():
    point = a_point()
    again = Point.from_dict(json.loads(json.dumps(point.as_dict())))  # batch sizes come back as ints
    assert again == point
    assert again.model_step.rows_per_execute == 3.0 and again.model_step.max_batch == 8
    assert again.custom.padding_ratio == 1.1 and again.custom.rows_per_forward == 2.0
    assert "rows/exec   3.0  padded/real 1.100" in again.describe()


def test_an_unknown_field_fails_loudly():
    record = a_point().as_dict()
    record["custom"]["rowz"] = 1
    with pytest.raises(ValueError, match=r"CustomMetrics has no field\(s\) \['rowz'\]"):
        Point.from_dict(record)


def test_the_committed_run_renders_the_committed_summary(tmp_path):
    """Every point of a real run (sweeps and comparisons) is read as a Point and the summary comes out as
    committed. After a deliberate change to perf/lib/summary.py, re-render it:
    python -m perf.lib.summary RUN."""
    run_dir = tmp_path / RUN.parent.name / RUN.name
    run_dir.mkdir(parents=True)
    for name in ("points.json", "NOTES.md"):
        shutil.copy(RUN / name, run_dir / name)
    record = json.loads((RUN / "points.json").read_text())
    typed = summary.with_typed_points(record)
    assert len(typed["points"]) == len(record["points"]) > 0
    assert all(isinstance(point, Point) for point in typed["points"])
    assert all(isinstance(result["on"], Point) for result in typed["comparisons"]["batching"].values())
    summary.write(run_dir, record)
    assert (run_dir / "summary.md").read_text() == (RUN / "summary.md").read_text()


def test_the_accel_report_reads_its_points_as_points(tmp_path):
    record = json.loads((RUN / "accel-tiny.json").read_text())
    text = accel.write_report(tmp_path / "accel.md", record).read_text()
    point = Point.from_dict(record["points"]["text_200"])
    rows = f"{point.model_step.rows_per_execute:.1f} rows per execute"
    assert f"text_200 through Triton (1000 requests) | {point.throughput:.1f} req/s" in text and rows in text


def test_response_cache_hits_are_counted_and_said():
    """`make perf` against a server with a response cache: Triton's `cache_hit` count of the ensemble is
    kept per point and said on the progress line, on the console at the end and in summary.md."""
    from perf.lib.server_stats import Snapshot, stats_delta

    def stats(success: int, hits: int) -> dict:
        counts = {"success": {"count": success, "ns": success * 1000}, "cache_hit": {"count": hits, "ns": 0}}
        return {RERANKER.ensemble: {"inference_stats": counts}}

    stages = stats_delta(Snapshot(stats(10, 2)), Snapshot(stats(30, 7)))
    assert stages[RERANKER.ensemble].cache_hits == 5 and stages[RERANKER.ensemble].requests == 20

    point = a_point()
    assert summary.cache_hits_note([point]) is None and "cache" not in point.describe()
    point.stages.update(stages)
    assert Point.from_dict(json.loads(json.dumps(point.as_dict()))).cache_hits == 5
    assert "response-cache hits 5 of 20" in point.describe()
    note = summary.cache_hits_note([point])
    assert note is not None and "tiny rerank_200 http c=4 (5 of 20)" in note
    assert summary.cache_lines({"points": [point]}) == [f"**{note}**", ""]
