"""The reranker ensemble served by a real tritonserver, checked against the official reranker."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpc
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import rerank, rerank_inputs, settled_stats
from tools import synthetic

pytestmark = pytest.mark.server

PHOTO = synthetic.encode_image(synthetic.photo(448, 448, seed=31), "JPEG", quality=90)
SCREEN = synthetic.encode_image(synthetic.screenshot(1280, 720, seed=32))
CLIP = synthetic.video(seconds=4, fps=12, width=320, height=240, kind="mp4", seed=33)

TEXT_QUERY = {"text": "What is the capital of China?"}
IMAGE_QUERY = {"images": [PHOTO], "text": "find pictures like this"}
VIDEO_QUERY = {"videos": [CLIP]}
DOCUMENTS = [
    {"text": "The capital of China is Beijing."},
    {"text": "Gravity is a force that attracts two bodies towards each other."},
    {"images": [PHOTO]},
    {"images": [SCREEN], "text": "dashboard"},
    {"videos": [CLIP], "text": "a moving disc"},
]


@pytest.fixture(scope="module")
def official(tiny_reranker_path):
    from tests.reference import OfficialReranker

    return OfficialReranker(tiny_reranker_path)


@pytest.mark.parametrize(
    ("query", "instruction"),
    [(TEXT_QUERY, None), (IMAGE_QUERY, "Retrieve images that match"), (VIDEO_QUERY, None)],
    ids=["text-query", "image-query", "video-query"],
)
def test_batched_scores_equal_the_official_one_pair_scores(http_client, official, query, instruction):
    got = rerank(http_client, http, query, DOCUMENTS, instruction)
    expected = official.score(query, DOCUMENTS, instruction)
    assert got.shape == (len(DOCUMENTS),)
    assert np.abs(got - np.array(expected)).max() <= 1e-5
    assert ((got >= 0) & (got <= 1)).all()


def test_grpc_gives_the_same_scores(grpc_client, http_client):
    assert np.array_equal(
        rerank(grpc_client, grpc, TEXT_QUERY, DOCUMENTS), rerank(http_client, http, TEXT_QUERY, DOCUMENTS)
    )


def test_concurrent_rerank_requests_are_batched(http_client):
    before = settled_stats(http_client, "qwen3_vl_reranker_model")
    documents = [{"text": f"document {index} " * (300 + index)} for index in range(24)]
    pending = [
        http_client.async_infer("qwen3_vl_reranker", rerank_inputs(http, TEXT_QUERY, [document]))
        for document in documents
    ]
    scores = [request.get_result().as_numpy("SCORE")[0, 0] for request in pending]
    after = settled_stats(http_client, "qwen3_vl_reranker_model", int(before["inference_count"]) + 24)
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == 24 and executions < inferences, (executions, inferences)
    alone = rerank(http_client, http, TEXT_QUERY, documents[:3])
    assert np.abs(alone - np.array(scores[:3])).max() <= 1e-5


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({}, "document has no content"),
        ({"images": [b"not an image"]}, "DOCUMENT_IMAGE[0]"),
        ({"videos": [b"\x00" * 300]}, "DOCUMENT_VIDEO[0]"),
        ({"text": b"\xc3\x28"}, "DOCUMENT_TEXT: not valid UTF-8"),
    ],
)
def test_a_bad_pair_fails_only_its_own_request(http_client, official, document, message):
    good = [
        http_client.async_infer("qwen3_vl_reranker", rerank_inputs(http, TEXT_QUERY, DOCUMENTS[:2]))
        for _ in range(3)
    ]
    bad = http_client.async_infer(
        "qwen3_vl_reranker", rerank_inputs(http, TEXT_QUERY, [DOCUMENTS[0], document])
    )
    with pytest.raises(InferenceServerException) as failure:
        bad.get_result()
    assert failure.value.status() == "400"
    assert message in failure.value.message() and "row 1" in failure.value.message()
    expected = np.array(official.score(TEXT_QUERY, DOCUMENTS[:2]))
    for request in good:
        assert np.abs(request.get_result().as_numpy("SCORE")[:, 0] - expected).max() <= 1e-5
    assert http_client.is_model_ready("qwen3_vl_reranker")
