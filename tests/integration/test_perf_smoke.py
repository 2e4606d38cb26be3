"""`make perf` in miniature: the runner against the test server, one workload at concurrency 1 and 2."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.server


def run_perf(server, tmp_path, *arguments: str) -> subprocess.CompletedProcess:
    """`python -m perf.run` against the test server, quick measurements, files under tmp_path."""
    command = [
        sys.executable,
        "-m",
        "perf.run",
        "--url",
        server.http_url,
        "--metrics-url",
        server.metrics_url,
        *arguments,
        "--protocols",
        "http",
        "--compare",
        "none",
        "--quick",
        "--data-dir",
        str(tmp_path / "data"),
        "--run-dir",
        str(tmp_path / "run"),
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_runner_writes_a_summary_and_csv_with_nonzero_throughput(server, tmp_path):
    run_dir = tmp_path / "run"
    result = run_perf(
        server,
        tmp_path,
        "--grpc-url",
        server.grpc_url,
        "--workloads",
        "text_200",
        "--rows",
        "text_200=16",
        "--concurrency",
        "1,2",
    )
    assert "[  2/2] served text_200 http c=2" in result.stderr  # progress is printed as it goes

    summary = (run_dir / "summary.md").read_text()
    assert "| text_200 | http | 1 |" in summary and "| text_200 | http | 2 |" in summary
    assert (run_dir / "throughput_vs_concurrency-served.png").stat().st_size > 1000
    with open(run_dir / "csv" / "sweep-served-text_200-http.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["Concurrency"] for row in rows] == ["1", "2"]
    assert all(float(row["Inferences/Second"]) > 0 for row in rows)

    points = json.loads((run_dir / "points.json").read_text())["points"]
    for point in points:
        assert point["ok"] and point["throughput"] > 0
        # The composing models' statistics and the Python models' own metrics were read around each run.
        assert point["stages"]["qwen3_vl_embedding_model"]["requests"] > 0
        # ... including the short rows the runner sends so the stubs flush their metrics (server_stats.nudge).
        texts = point["custom"]["rows"] - point["custom"]["nudge_rows"]
        assert texts > 0 and point["custom"]["tokens"] >= 200 * texts
        assert point["custom"]["preprocess_items"]["text"] > 0


def test_rerank_200_goes_to_the_reranker_ensemble_and_reads_its_steps(server, tmp_path):
    run_dir = tmp_path / "run"
    run_perf(server, tmp_path, "--workloads", "rerank_200", "--rows", "rerank_200=8", "--concurrency", "1")

    summary = (run_dir / "summary.md").read_text()
    row = next(line for line in summary.splitlines() if line.startswith("| rerank_200 | http | 1 |"))
    assert float(row.split("|")[4].replace(",", "")) > 0  # infer/s

    (point,) = json.loads((run_dir / "points.json").read_text())["points"]
    assert point["ok"] and point["throughput"] > 0 and point["ensemble"] == "qwen3_vl_reranker"
    assert set(point["stages"]) == {
        "qwen3_vl_reranker",
        "qwen3_vl_reranker_preprocess",
        "qwen3_vl_reranker_model",
    }
    assert point["stages"]["qwen3_vl_reranker_model"]["requests"] > 0
    # The reranker steps export the qwen3vl_* metrics too (labelled with their own model names).
    pairs = point["custom"]["rows"] - point["custom"]["nudge_rows"]
    assert pairs > 0 and point["custom"]["tokens"] >= 200 * pairs
    assert point["custom"]["preprocess_items"]["text"] > 0
