"""Priority classes on the real tritonserver (issue 20, item 2): an interactive request overtakes bulk rows
queued before it, and marking a request bulk (client library, raw tritonclient, gateway header) changes
when it runs, never what it returns."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpc

from qwen3vl_client import EmbeddingClient
from qwen3vl_client._wire import priority_arguments
from tests.integration.conftest import embed, embedding_inputs
from tests.integration.gateway_process import post

ENSEMBLE = "qwen3_vl_embedding"
QUERY = {"text": "what is the capital of France?"}


def bulk_rows(request: int, rows: int = 32, words: int = 60) -> list[dict]:
    """Distinct long-ish texts (no cache hit, a real forward each)."""
    return [
        {"text": " ".join(f"document {request} row {row} word {word}" for word in range(words // 5))}
        for row in range(rows)
    ]


def send_burst(url: str, bulk_requests: int, marks: dict) -> tuple[dict[str, float], float]:
    """`bulk_requests` requests of 32 texts (with `marks`), then, once the model step is busy with them, one
    short interactive query: (when each bulk request was answered, when the query was), monotonic."""
    client = grpc.InferenceServerClient(url)
    answered: dict[str, float] = {}
    errors: list[str] = []
    done = threading.Event()

    def callback(name: str):
        def record(result, error):
            if error is not None:
                errors.append(f"{name}: {error}")
            answered[name] = time.monotonic()
            if len(answered) == bulk_requests + 1:
                done.set()

        return record

    try:
        for index in range(bulk_requests):
            inputs = embedding_inputs(grpc, bulk_rows(index))
            client.async_infer(ENSEMBLE, inputs, callback(f"bulk{index}"), **marks)
        # The first bulk answer shows the model step at work with the rest queued behind it.
        deadline = time.monotonic() + 120
        while not answered and time.monotonic() < deadline:
            time.sleep(0.005)
        client.async_infer(ENSEMBLE, embedding_inputs(grpc, [QUERY]), callback("query"))
        assert done.wait(300), f"only {len(answered)} answers"
    finally:
        client.close()
    assert not errors, errors
    query_at = answered.pop("query")
    return answered, query_at


def test_an_interactive_query_overtakes_bulk_rows_queued_before_it(server):
    """The query comes after 11 bulk requests (352 texts of ~100 tokens) are queued and the first is done:
    marked bulk, they wait while it runs (it is answered before most of them); for contrast the same
    requests unmarked are served in turn and the query waits for most of them."""
    bulk, query_at = send_burst(server.grpc_url, 12, priority_arguments("bulk"))
    overtaken = sum(1 for at in bulk.values() if at > query_at)
    plain, plain_query_at = send_burst(server.grpc_url, 12, {})
    plain_overtaken = sum(1 for at in plain.values() if at > plain_query_at)
    print(f"bulk answered after the query: marked {overtaken} of 11, unmarked {plain_overtaken} of 11")
    assert overtaken >= 8
    assert overtaken > plain_overtaken


def test_a_bulk_client_gets_the_same_vectors(server, grpc_client):
    texts = [QUERY["text"], "a second text", "a third one"]
    expected = embed(grpc_client, grpc, [{"text": text} for text in texts])
    for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
        with EmbeddingClient(url, protocol, priority="bulk") as client:
            got = client.embed(texts=texts)
        assert np.abs(got - expected).max() <= 1e-6, protocol


@pytest.mark.parametrize("header", ["bulk", "interactive"])
def test_the_gateway_takes_x_priority_and_answers_the_same(gateway, grpc_client, header):
    body = {"input": [QUERY["text"], "a second text"]}
    status, _, answer = post(f"{gateway.url}/v1/embeddings", body, {"X-Priority": header})
    assert status == 200, answer
    got = np.array([item["embedding"] for item in answer["data"]], dtype=np.float32)
    expected = embed(grpc_client, grpc, [{"text": text} for text in body["input"]])
    assert np.abs(got - expected).max() <= 1e-5


def test_the_gateway_refuses_an_unknown_priority_class(gateway):
    status, _, answer = post(f"{gateway.url}/v1/embeddings", {"input": "x"}, {"X-Priority": "urgent"})
    assert status == 400 and "X-Priority" in answer["error"]["message"], answer
