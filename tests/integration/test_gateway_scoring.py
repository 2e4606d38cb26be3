"""/rerank and /score through the real gateway: the reranker ensemble's scores, sorted and paired."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import tritonclient.grpc as grpc

from tests.integration.conftest import rerank
from tests.integration.gateway_process import post
from tools import synthetic

pytestmark = pytest.mark.server

PHOTO = synthetic.encode_image(synthetic.photo(224, 224, seed=21), "JPEG", quality=90)
QUERY = "What is the capital of China?"
DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity attracts bodies.",
    "Paris is the capital of France.",
    "Beijing hosted the 2008 Olympics.",
]


def photo_uri() -> str:
    return "data:image/jpeg;base64," + base64.b64encode(PHOTO).decode()


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/v2/rerank"])
def test_rerank_equals_the_reranker_ensemble_sorted_best_first(gateway, grpc_client, path):
    expected = rerank(grpc_client, grpc, {"text": QUERY}, [{"text": text} for text in DOCUMENTS])
    status, _, body = post(
        gateway.url + path, {"model": "qwen3_vl_reranker", "query": QUERY, "documents": DOCUMENTS}
    )
    assert status == 200, body
    assert body["id"].startswith("score-") and body["model"] == "qwen3_vl_reranker"
    results = body["results"]
    assert [result["index"] for result in results] == list(np.argsort(-expected, kind="stable"))
    for result in results:
        assert abs(result["relevance_score"] - expected[result["index"]]) <= 1e-6
        assert result["document"] == {"text": DOCUMENTS[result["index"]], "multi_modal": None}
    scores = [result["relevance_score"] for result in results]
    assert scores == sorted(scores, reverse=True)


def test_rerank_top_n_instruction_multimodal_documents_and_return_documents(gateway, grpc_client):
    instruction = "Find the city."
    documents = [{"text": DOCUMENTS[0]}, {"images": [PHOTO]}, {"text": "a photo", "images": [PHOTO]}]
    expected = rerank(grpc_client, grpc, {"text": QUERY}, documents, instruction)
    request = {
        "query": QUERY,
        "documents": [
            DOCUMENTS[0],
            {"content": [{"type": "image_url", "image_url": {"url": photo_uri()}}]},
            {"content": [{"type": "text", "text": "a photo"}, {"image_url": photo_uri()}]},
        ],
        "instruction": instruction,
        "top_n": 2,
        "return_documents": False,
    }
    status, _, body = post(f"{gateway.url}/v1/rerank", request)
    assert status == 200, body
    assert [result["index"] for result in body["results"]] == list(np.argsort(-expected, kind="stable")[:2])
    for result in body["results"]:
        assert abs(result["relevance_score"] - expected[result["index"]]) <= 1e-6
        assert result["document"] is None


def test_score_pairs_one_to_one_one_to_many_and_many_to_many(gateway, grpc_client):
    to_many = rerank(grpc_client, grpc, {"text": QUERY}, [{"text": text} for text in DOCUMENTS])
    pairwise = np.array(
        [
            rerank(grpc_client, grpc, {"text": query}, [{"text": document}])[0]
            for query, document in [("capital of China", DOCUMENTS[0]), ("gravity", DOCUMENTS[1])]
        ]
    )
    cases = [
        ({"text_1": QUERY, "text_2": DOCUMENTS[0]}, to_many[:1]),
        ({"text_1": QUERY, "text_2": DOCUMENTS}, to_many),
        ({"queries": [QUERY], "documents": DOCUMENTS}, to_many),
        ({"queries": QUERY, "items": DOCUMENTS}, to_many),
        ({"data_1": ["capital of China", "gravity"], "data_2": DOCUMENTS[:2]}, pairwise),
    ]
    for path, (request, expected) in zip(["/score", "/v1/score"] * 3, cases):
        status, _, body = post(gateway.url + path, request)
        assert status == 200, body
        assert body["object"] == "list" and body["id"].startswith("score-")
        assert [item["index"] for item in body["data"]] == list(range(len(expected)))
        got = np.array([item["score"] for item in body["data"]])
        assert np.abs(got - expected).max() <= 1e-6


def test_score_and_rerank_refuse_what_vllm_refuses(gateway):
    status, _, body = post(f"{gateway.url}/score", {"text_1": ["a", "b"], "text_2": ["c", "d", "e"]})
    assert status == 400 and "1:1, 1:N or N:N" in body["error"]["message"]
    status, _, body = post(f"{gateway.url}/score", {"text_1": "a"})
    assert status == 400
    status, _, body = post(f"{gateway.url}/v1/rerank", {"query": "a", "documents": []})
    assert status == 400 and body["error"]["param"] == "documents"
    status, _, body = post(
        f"{gateway.url}/v1/rerank", {"model": "qwen3_vl_embedding", "query": "a", "documents": ["b"]}
    )
    assert status == 404 and body["error"]["type"] == "NotFoundError"


def test_a_bad_document_is_named_and_a_bad_query_too(gateway):
    bad = {"content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}]}
    status, _, body = post(f"{gateway.url}/v1/rerank", {"query": QUERY, "documents": ["fine", bad, "fine"]})
    assert status == 400, body
    assert body["error"]["message"].startswith("documents[1]: ")
    status, _, body = post(f"{gateway.url}/v1/rerank", {"query": bad, "documents": ["fine", "also fine"]})
    assert status == 400, body
    assert body["error"]["message"].startswith("query: ")
