"""No body may bloat or stall the gateway (issue 19): hostile bodies within the 64 MiB limit are answered
within 5 s while a small request alongside is answered within 1 s throughout, and the gateway's peak RSS
stays under 1 GB; slow and idle clients are timed out. perf/results/cpu-x86_64-2c/2026-12-07/
gateway-bodies.md has the figures (perf/drills/hostile_bodies.py measures them)."""

from __future__ import annotations

import socket
import time

import pytest

from perf.drills import hostile_bodies
from tests.integration.gateway_process import GatewayProcess, post
from tools.ports import free_port

pytestmark = pytest.mark.server
MB = 1_000_000


@pytest.fixture(scope="module")
def door(server):
    with GatewayProcess(server.grpc_url) as running:
        yield running


@pytest.mark.parametrize(
    ("build", "size", "status", "fragment"),
    [
        (hostile_bodies.token_ids, 60 * MB, 413, "GATEWAY_MAX_BODY_VALUES"),
        (hostile_bodies.one_char_strings, 60 * MB, 413, "GATEWAY_MAX_BODY_VALUES"),
        (hostile_bodies.long_text, 60 * MB, 400, "input[0] has 60000000 characters, over the limit"),
        (hostile_bodies.token_ids_under_cap, 0, 400, "input has 1950000 token ids, over the limit"),
        (hostile_bodies.percent_uri, 30 * MB, 400, "IMAGE[0]"),
    ],
    ids=["60 MB of token ids", "15 M one-character strings", "a 60 MB text", "1.95 M token ids", "30 MB URI"],
)
def test_a_hostile_body_neither_bloats_nor_stalls_the_gateway(door, build, size, status, fragment):
    path, body = build(size)
    result = hostile_bodies.attack(door.url, path, body, small_path="/tokenize")
    assert result["status"] == status, result
    assert fragment in result["message"], result
    assert result["seconds"] < 5, result
    assert result["small_statuses"] == [200] and result["small_worst"] < 1, result
    _, peak = hostile_bodies.peak_rss_mb(door.pid)
    assert peak < 1000, f"peak RSS {peak:.0f} MB"


@pytest.fixture(scope="module")
def impatient():
    """Short client timeouts; no Triton needed."""
    with GatewayProcess(
        f"127.0.0.1:{free_port()}",
        wait_for="/version",
        GATEWAY_HEADER_TIMEOUT="1",
        GATEWAY_BODY_TIMEOUT="1",
        GATEWAY_KEEP_ALIVE_TIMEOUT="1",
    ) as running:
        yield running


def _closed_after(connection: socket.socket, limit: float) -> tuple[bytes, float]:
    """What the gateway sent before closing ``connection``, and after how long."""
    started = time.monotonic()
    connection.settimeout(limit)
    received = b""
    while True:
        chunk = connection.recv(65536)
        if not chunk:
            return received, time.monotonic() - started
        received += chunk


def test_slow_and_idle_clients_are_timed_out(impatient):
    address = ("127.0.0.1", impatient.port)
    with socket.create_connection(address) as silent:  # opens, sends nothing
        assert _closed_after(silent, 5)[1] < 3
    with socket.create_connection(address) as trickling:  # a header byte at a time
        started = time.monotonic()
        trickling.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")
        try:
            while time.monotonic() - started < 5:
                trickling.sendall(b"X")
                time.sleep(0.2)
        except OSError:
            pass  # closed under us: what should happen
        assert time.monotonic() - started < 3
    with socket.create_connection(address) as slow_body:
        slow_body.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"input": '
        )
        answer, seconds = _closed_after(slow_body, 5)
        assert answer.startswith(b"HTTP/1.1 408 ") and b"GATEWAY_BODY_TIMEOUT" in answer and seconds < 3
    with socket.create_connection(address) as idle:
        idle.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        answer, seconds = _closed_after(idle, 5)
        assert answer.startswith(b"HTTP/1.1 200 ") and seconds < 3  # answered, then closed when idle


def test_a_vllm_client_keeps_its_model_name_and_jina_documents_work(door):
    """By default the gateway answers to what vLLM would serve for the weights (here the tiny checkpoints'
    directory names) and to the ensemble names; anything else is a 404 listing them."""
    url = door.url
    status, _, body = post(url + "/v1/embeddings", {"model": "qwen3-vl-embedding-tiny", "input": "a"})
    assert status == 200 and body["model"] == "qwen3-vl-embedding-tiny", body
    status, _, body = post(url + "/v1/embeddings", {"input": "a"})
    assert status == 200 and body["model"] == "qwen3-vl-embedding-tiny", body
    status, _, body = post(url + "/v1/embeddings", {"model": "Qwen/Qwen3-VL-Embedding-8B", "input": "a"})
    assert status == 404 and "`qwen3-vl-embedding-tiny`" in body["error"]["message"], body
    assert (
        "`qwen3_vl_embedding`" in body["error"]["message"] and "SERVED_MODEL_NAME" in body["error"]["message"]
    )
    plain = {"model": "qwen3_vl_reranker", "query": "capital of China", "documents": ["Beijing.", "Gravity."]}
    status, _, expected = post(url + "/v1/rerank", plain)
    assert status == 200, expected
    jina = {**plain, "documents": [{"text": "Beijing."}, {"text": "Gravity."}]}
    status, _, body = post(url + "/v1/rerank", jina)
    assert status == 200 and body["results"] == expected["results"], body
    status, _, body = post(url + "/v1/embeddings", {"input": "a", "dimensions": 2**40})
    assert status == 400 and body["error"]["message"] == (
        "dimensions: Input should be less than or equal to 2147483647"
    ), body
