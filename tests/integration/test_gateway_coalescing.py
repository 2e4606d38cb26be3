"""Batch while busy through the real gateway and tritonserver: concurrent requests merged into shared
Triton calls get exactly the answers and usage they get alone, a bad item fails only its own request, and
a client that leaves breaks no other. The gateway here allows one Triton call per ensemble at a time, so
that whatever arrives during a call is merged."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.gateway_process import GatewayProcess, get, post

pytestmark = pytest.mark.server

TEXTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other.",
    "Paris is the capital of France.",
    "A cat sat on the mat.",
    "Photosynthesis turns light into chemical energy.",
    "The quick brown fox jumps over the lazy dog.",
]
TASK = "Given a web search query, retrieve relevant passages that answer the query"
# A call that keeps the gateway's one call busy while the requests of a test arrive behind it.
BLOCKER = {"input": [f"{text} {index}" * 20 for index, text in enumerate(TEXTS * 10)]}
OVER_TEXT_LIMIT = "x" * (1024 * 1024 + 10)  # the preprocess step's max_text_bytes is 1 MiB


@pytest.fixture(scope="module")
def merging(server):
    with GatewayProcess(server.grpc_url, GATEWAY_COALESCE_CALLS="1") as running:
        yield running


def requests_of_every_kind() -> list[dict]:
    """One-item and few-item requests whose rows differ in everything a row may carry."""
    requests: list[dict] = []
    for index, text in enumerate(TEXTS):
        requests.append({"input": text})
        requests.append({"input": [text, TEXTS[index - 1]], "dimensions": 64})
        requests.append({"input": text, "dimensions": 128, "instruction": TASK})
        requests.append({"input": f"Instruct: {TASK}\nQuery: {text}"})
        requests.append({"input": text, "input_format": "vllm"})
        requests.append(
            {"messages": [{"role": "system", "content": "Find facts."}, {"role": "user", "content": text}]}
        )
    return requests


def call_rows(gateway: GatewayProcess, model: str) -> tuple[float, float, float]:
    """(calls, rows, calls of one row) of gateway_triton_call_rows for ``model`` so far."""
    status, _, text = get(gateway.url + "/metrics")
    assert status == 200 and isinstance(text, bytes)
    calls = rows = single = 0.0
    for family in text_string_to_metric_families(text.decode()):
        if family.name != "gateway_triton_call_rows":
            continue
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name.endswith("_count"):
                calls = sample.value
            elif sample.name.endswith("_sum"):
                rows = sample.value
            elif sample.name.endswith("_bucket") and sample.labels["le"] == "1.0":
                single = sample.value
    return calls, rows, single


def post_all(url: str, bodies: list[dict], blocker: dict | None = None) -> list[tuple[int, dict]]:
    """All bodies at once (behind ``blocker``, sent first, when given); (status, body) of each."""
    with ThreadPoolExecutor(len(bodies) + 1) as pool:
        first = pool.submit(post, url, blocker) if blocker else None
        if first:
            time.sleep(0.05)
        answers = [future.result() for future in [pool.submit(post, url, body) for body in bodies]]
        if first:
            assert first.result()[0] == 200
    return [(status, body) for status, _, body in answers]


def vectors(body: dict) -> np.ndarray:
    return np.array([item["embedding"] for item in body["data"]], dtype=np.float32)


def test_merged_requests_get_the_vectors_and_usage_they_get_alone(merging):
    url = merging.url + "/v1/embeddings"
    requests = requests_of_every_kind()
    alone = [post(url, body) for body in requests]  # one at a time: nothing to merge with
    assert all(status == 200 for status, _, _ in alone), [body for _, _, body in alone]
    calls_before, rows_before, _ = call_rows(merging, "qwen3_vl_embedding")
    together = post_all(url, requests, BLOCKER)
    calls, rows, _ = call_rows(merging, "qwen3_vl_embedding")
    for request, (_, _, expected), (status, body) in zip(requests, alone, together):
        assert status == 200, body
        got, want = vectors(body), vectors(expected)
        assert got.shape == want.shape, request
        assert np.abs(got - want).max() <= 1e-6, request
        assert body["usage"] == expected["usage"] and body["usage"]["prompt_tokens"] > 0, request
    sent = len(requests) + 1
    assert rows - rows_before == sum(len(vectors(body)) for _, body in together) + len(BLOCKER["input"])
    assert calls - calls_before < sent / 4  # merged: far fewer Triton calls than requests


def test_a_bad_item_fails_its_own_request_only_and_names_its_index(merging):
    url = merging.url + "/v1/embeddings"
    good = [{"input": text} for text in TEXTS] + [{"input": [TEXTS[0], TEXTS[1]], "dimensions": 64}]
    expected = [post(url, body)[2] for body in good]
    bad_text = {"input": [TEXTS[2], OVER_TEXT_LIMIT, TEXTS[3]]}
    bad_size = {"input": TEXTS[4], "dimensions": 8}
    calls_before, _, _ = call_rows(merging, "qwen3_vl_embedding")
    answers = post_all(url, good[:3] + [bad_text] + good[3:5] + [bad_size] + good[5:], BLOCKER)
    calls, _, _ = call_rows(merging, "qwen3_vl_embedding")
    statuses = [status for status, _ in answers]
    assert statuses == [200] * 3 + [400] + [200] * 2 + [400] + [200] * 2, answers
    text_error = answers[3][1]["error"]
    assert text_error["message"].startswith("input[1]: TEXT: ") and text_error["param"] == "input"
    assert answers[6][1]["error"]["message"].startswith("input[0]: DIMENSIONS: must be between 64 and")
    for (_, body), want in zip(answers[:3] + answers[4:6] + answers[7:], expected):
        assert np.abs(vectors(body) - vectors(want)).max() <= 1e-6
        assert body["usage"] == want["usage"]
    assert calls - calls_before < len(answers)  # they were merged (and the good ones sent again)


def test_a_client_that_leaves_breaks_no_other(merging):
    url = merging.url + "/v1/embeddings"
    address = urlsplit(merging.url)
    body = json.dumps({"input": TEXTS[0]}).encode()
    raw = (
        f"POST /v1/embeddings HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    def leave() -> None:
        time.sleep(0.02)  # behind the blocker, beside the others
        with socket.create_connection((address.hostname, address.port)) as connection:
            connection.sendall(raw)
            time.sleep(0.05)  # queued by now; then gone without reading the answer

    with ThreadPoolExecutor(4) as pool:
        leaving = [pool.submit(leave) for _ in range(3)]
        answers = post_all(url, [{"input": text} for text in TEXTS], BLOCKER)
        for future in leaving:
            future.result()
    assert all(status == 200 and len(body["data"]) == 1 for status, body in answers), answers
    assert post(url, {"input": TEXTS[1]})[0] == 200


def test_merged_rerank_and_score_requests_get_the_scores_and_usage_they_get_alone(merging):
    requests = [
        ("/v1/rerank", {"query": TEXTS[0], "documents": TEXTS[1:4]}),
        ("/v1/rerank", {"query": TEXTS[2], "documents": TEXTS[:2], "instruction": "Find the city."}),
        ("/score", {"text_1": TEXTS[3], "text_2": TEXTS[4]}),
        ("/score", {"text_1": TEXTS[:2], "text_2": TEXTS[4:]}),
        ("/v1/rerank", {"query": TEXTS[5], "documents": [TEXTS[0]], "top_n": 1}),
    ] * 3
    alone = [post(merging.url + path, body) for path, body in requests]
    assert all(status == 200 for status, _, _ in alone), alone
    calls_before, _, _ = call_rows(merging, "qwen3_vl_reranker")
    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(lambda pair: post(merging.url + pair[0], pair[1]), requests))
    calls, _, _ = call_rows(merging, "qwen3_vl_reranker")
    for (path, _), (_, _, expected), (status, _, body) in zip(requests, alone, together):
        assert status == 200, body
        key, score = ("results", "relevance_score") if "rerank" in path else ("data", "score")
        got = {entry["index"]: entry[score] for entry in body[key]}
        want = {entry["index"]: entry[score] for entry in expected[key]}
        assert got.keys() == want.keys()
        assert max(abs(got[index] - want[index]) for index in got) <= 1e-6
        assert body["usage"] == expected["usage"]
    assert calls - calls_before < len(requests)


def test_coalescing_off_sends_every_request_on_its_own(server):
    with GatewayProcess(server.grpc_url, GATEWAY_COALESCE_CALLS="0") as plain:
        answers = post_all(plain.url + "/v1/embeddings", [{"input": text} for text in TEXTS * 2])
        assert all(status == 200 for status, _ in answers)
        calls, rows, single = call_rows(plain, "qwen3_vl_embedding")
    assert calls == rows == single == len(TEXTS) * 2
