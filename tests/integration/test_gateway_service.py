"""The gateway's service routes against the real tritonserver: models, health, version, metrics, tokenize,
and a 1,000-request burst (what `vllm bench serve` sends at t=0) that must be served whole."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from tests.integration.gateway_process import get, post
from tools.ports import free_ports
from tools.triton_command import has_nvidia_gpu

pytestmark = pytest.mark.server


def test_models_health_ping_and_version(gateway):
    status, _, body = get(f"{gateway.url}/v1/models")
    assert status == 200 and body["object"] == "list"
    cards = {card["id"]: card for card in body["data"]}
    # What vLLM would serve for the weights (the tiny checkpoints' directory names), and the ensembles.
    assert set(cards) == {
        "qwen3-vl-embedding-tiny",
        "qwen3_vl_embedding",
        "qwen3-vl-reranker-tiny",
        "qwen3_vl_reranker",
    }
    assert [card["id"] for card in body["data"]][0] == "qwen3-vl-embedding-tiny"
    assert cards["qwen3_vl_embedding"]["max_model_len"] == 8192
    assert cards["qwen3_vl_reranker"]["max_model_len"] == 10240
    assert all(card["object"] == "model" and card["owned_by"] and card["root"] for card in cards.values())
    assert get(f"{gateway.url}/health")[0] == 200
    assert get(f"{gateway.url}/ping")[0] == 200 and post(f"{gateway.url}/ping", b"")[0] == 200
    status, _, body = get(f"{gateway.url}/version")
    assert status == 200 and body["version"] and body["triton"]


def test_tokenize_and_detokenize_use_the_checkpoints_tokenizer(gateway, tiny_tokenizer):
    text = "Hello, world! The capital of China is Beijing."
    expected = tiny_tokenizer(text)["input_ids"]
    status, _, body = post(f"{gateway.url}/tokenize", {"model": "qwen3_vl_embedding", "prompt": text})
    assert status == 200, body
    assert body["tokens"] == expected and body["count"] == len(expected) and body["max_model_len"] == 8192
    status, _, body = post(f"{gateway.url}/tokenize", {"prompt": text, "return_token_strs": True})
    assert body["token_strs"] == tiny_tokenizer.convert_ids_to_tokens(expected)
    status, _, body = post(f"{gateway.url}/detokenize", {"tokens": expected})
    assert status == 200 and body == {"prompt": text}
    assert post(f"{gateway.url}/detokenize", {"tokens": [10**9]})[0] == 400


def test_metrics_count_requests_by_route_and_status(gateway):
    post(f"{gateway.url}/v1/embeddings", {"input": "counted"})
    post(f"{gateway.url}/v1/embeddings", {"model": "nope", "input": "counted"})
    status, _, text = get(f"{gateway.url}/metrics")
    text = text.decode() if isinstance(text, bytes) else str(text)
    assert status == 200

    def value(pattern: str) -> float:
        match = re.search(pattern + r" ([0-9.e+]+)", text)
        assert match, pattern
        return float(match.group(1))

    assert value(r'gateway_requests_total\{route="/v1/embeddings",status="200"\}') >= 1
    assert value(r'gateway_requests_total\{route="/v1/embeddings",status="404"\}') >= 1
    assert value(r'gateway_request_duration_seconds_count\{route="/v1/embeddings"\}') >= 2
    assert "gateway_triton_requests_in_flight" in text and "gateway_requests_waiting" in text


def test_a_burst_of_1000_concurrent_requests_is_served_whole(gateway):
    """Like `vllm bench serve --request-rate inf`: every request on its own connection at t=0, ~200 tokens."""
    import aiohttp

    prompt = " ".join(f"word{index}" for index in range(100))  # ~200 tokens

    async def burst() -> list[int]:
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def one(index: int) -> int:
                body = {
                    "model": "qwen3_vl_embedding",
                    "input": f"{index} {prompt}",
                    "truncate_prompt_tokens": -1,
                }
                headers = {"x-request-id": f"burst-{index}"}
                async with session.post(
                    f"{gateway.url}/v1/embeddings", json=body, headers=headers
                ) as response:
                    await response.read()
                    return response.status

            return await asyncio.gather(*(one(index) for index in range(1000)))

    started = time.monotonic()
    statuses = asyncio.run(burst())
    print(f"burst of 1000: {time.monotonic() - started:.1f} s")
    assert statuses.count(200) == 1000, {status: statuses.count(status) for status in set(statuses)}


def health(url: str) -> int | None:
    try:
        return get(url, timeout=2)[0]
    except OSError:  # not listening yet
        return None


def test_serve_starts_the_gateway_beside_tritonserver_and_ctrl_c_stops_both(tmp_path):
    """`make serve`'s command on the launcher's small test repository: the gateway's /health turns 200
    once Triton is ready; Ctrl-C (SIGINT to the foreground process group) stops both."""
    http_port, grpc_port, metrics_port, gateway_port = free_ports(4)
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tools.launcher",
                "serve",
                f"--model-repository={REPO / 'tests' / 'integration' / 'launcher_repository'}",
                f"--http-port={http_port}",
                f"--grpc-port={grpc_port}",
                f"--metrics-port={metrics_port}",
            ],
            cwd=REPO,
            env={**os.environ, "GATEWAY_PORT": str(gateway_port)},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group, as a terminal's foreground job is
        )
    try:
        deadline = time.monotonic() + 90
        # The launcher's line comes once it has seen the gateway listen, maybe a moment after /health's 200.
        while health(f"http://127.0.0.1:{gateway_port}/health") != 200 or "serving on" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=60) == 0, log.read_text()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", gateway_port), timeout=2).close()
        # The startup line names both front doors; on a CPU host the CUDA error lines come explained first.
        text = log.read_text()
        assert f"serving on http://127.0.0.1:{http_port} " in text, text
        assert f", OpenAI/vLLM gateway http://127.0.0.1:{gateway_port}; tritonserver pid" in text, text
        if not has_nvidia_gpu():
            assert -1 < text.find("launcher: no NVIDIA driver") < text.find("CudaDriverHelper"), text
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
