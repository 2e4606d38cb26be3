"""Every workload runs under plain perf_analyzer: the runner prints the line, perf/README lists it."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from perf.lib.perf_analyzer import Measurement
from perf.lib.servers import Endpoint
from perf.lib.workloads import WORKLOADS
from perf.run import plain_command
from tests.conftest import REPO


def test_runner_prints_a_complete_perf_analyzer_line():
    endpoint = Endpoint("served", "localhost:8000", "localhost:8001", "http://localhost:8002/metrics")
    line = plain_command(endpoint, "rerank_200", Path("perf/data/rerank_200.json"), "grpc", Measurement())
    words = shlex.split(line)
    assert words[0] == "perf_analyzer"
    option = dict(zip(words[1::2], words[2::2], strict=False))
    assert option["-m"] == "qwen3_vl_reranker"
    assert (option["-u"], option["-i"]) == ("localhost:8001", "grpc")
    assert option["--input-data"] == "perf/data/rerank_200.json"
    assert option["--measurement-mode"] == "time_windows"


def test_perf_readme_lists_a_line_for_every_workload_with_its_ensemble():
    text = (REPO / "perf" / "README.md").read_text()
    listed = dict(
        (workload, model)
        for model, workload in re.findall(r"\$PA -m (\w+) --input-data perf/data/(\w+)\.json", text)
    )
    assert listed == {name: workload.model for name, workload in WORKLOADS.items()}
