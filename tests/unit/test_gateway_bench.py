"""The pure parts of the gateway benchmarks: request bodies, the ratio table, the py-spy breakdown and the
`vllm bench serve` result block."""

from __future__ import annotations

import json

from perf.gateway_bench import summarize, summarize_gateway_profile
from perf.lib.gateway_load import Side, request_bodies
from perf.vllm_bench import _result_block


def test_request_bodies_are_what_vllm_bench_sends_for_openai_embeddings():
    (body,) = request_bodies(["hello world"])
    assert json.loads(body) == {
        "model": "Qwen/Qwen3-VL-Embedding-8B",
        "input": "hello world",
        "truncate_prompt_tokens": -1,
    }


def test_summary_averages_the_repeats_and_flags_the_target():
    sides = [
        Side("direct (perf_analyzer gRPC)", 16, 1, ok=True, throughput=100.0),
        Side("gateway (HTTP /v1/embeddings)", 16, 1, ok=True, throughput=95.0),
        Side("direct (perf_analyzer gRPC)", 16, 2, ok=True, throughput=300.0),
        Side("gateway (HTTP /v1/embeddings)", 16, 2, ok=True, throughput=165.0),
        Side("direct (perf_analyzer gRPC)", 64, 1, ok=False),
        Side("gateway (HTTP /v1/embeddings)", 64, 1, ok=True, throughput=10.0),
    ]
    c16, c64 = summarize(sides, [16, 64])
    assert c16 == {
        "concurrency": 16,
        "direct_throughput": 200.0,
        "gateway_throughput": 130.0,
        "ratio": 0.65,
        "meets_target": False,
    }
    assert c64 == {"concurrency": 64, "ratio": None}  # a failed side is not averaged in as zero


def test_profile_breakdown_takes_the_innermost_known_frame(tmp_path):
    raw = tmp_path / "gateway.txt"
    uvicorn = "run (uvicorn/main.py:10)"
    route = "create_embedding (/work/main/gateway/app.py:80)"
    raw.write_text(
        f"{uvicorn};{route};infer (/x/site-packages/tritonclient/grpc/aio/__init__.py:5) 6\n"
        f"{uvicorn};{route};model_validate (/x/site-packages/pydantic/main.py:7) 3\n"
        f"{uvicorn};{route} 1\n"
        "not a sample line\n"
    )
    profile = summarize_gateway_profile(raw)
    assert profile["samples"] == 10
    assert profile["categories"] == {
        "gRPC client (tritonclient / grpcio)": 0.6,
        "request body: JSON parse + pydantic validation": 0.3,
        "gateway code": 0.1,
    }
    assert profile["self"][0] == ("infer (tritonclient/grpc/aio/__init__.py)", 0.6)
    assert ("create_embedding (gateway/app.py)", 1.0) in profile["inclusive"]


def test_result_block_is_the_printed_table_only():
    output = "\n".join(
        [
            "Starting main benchmark run...",
            "============ Serving Benchmark Result ============",
            "Successful requests:                     1000",
            "----------------End-to-end Latency----------------",
            "P99 E2EL (ms):                           12715.23",
            "==================================================",
            "trailing noise",
        ]
    )
    block = _result_block(output)
    assert block.splitlines()[0].startswith("====") and block.splitlines()[-1].startswith("====")
    assert "Successful requests:                     1000" in block and "trailing" not in block
    assert _result_block("no table here") == ""
