"""`make perf-gateway` in miniature: the overhead benchmark against the test server and gateway, a few
short windows; it checks that both paths ran without errors and that the report holds the ratio."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.server


def test_gateway_bench_measures_both_paths_and_writes_the_ratio(server, gateway, tmp_path):
    command = [
        sys.executable,
        "-m",
        "perf.gateway_bench",
        "--triton-grpc-url",
        server.grpc_url,
        "--gateway-url",
        gateway.url,
        "--model",
        "qwen3_vl_embedding",  # the name the test gateway serves
        "--concurrency",
        "2",
        "--repeats",
        "1",
        "--window-ms",
        "2000",
        "--rows",
        "16",
        "--run-dir",
        str(tmp_path),
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    report = json.loads((tmp_path / "gateway-overhead.json").read_text())
    direct, through_gateway = report["runs"]
    assert direct["path"].startswith("direct") and through_gateway["path"].startswith("gateway")
    for run in report["runs"]:
        assert run["ok"] and run["errors"] == 0 and run["throughput"] > 0, run
        assert 0 < run["p50_ms"] <= run["p99_ms"]
    (row,) = report["summary"]
    assert row["ratio"] == pytest.approx(through_gateway["throughput"] / direct["throughput"], abs=1e-3)
    assert report["command"].startswith("python -m perf.gateway_bench --triton-grpc-url")
    markdown = (tmp_path / "gateway-overhead.md").read_text()
    assert f"| 2 | {direct['throughput']:.1f} | {through_gateway['throughput']:.1f} |" in markdown
