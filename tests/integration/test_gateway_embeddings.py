"""/v1/embeddings through the real gateway in front of the real tritonserver, called with the openai SDK:
the vectors are the ones a direct Triton call gives."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import tritonclient.grpc as grpc
from openai.types import CreateEmbeddingResponse

from tests.integration.conftest import embed
from tests.integration.gateway_process import post
from tools import synthetic

pytestmark = pytest.mark.server

PHOTO = synthetic.encode_image(synthetic.photo(448, 448, seed=11), "JPEG", quality=90)
SCREEN = synthetic.encode_image(synthetic.screenshot(640, 360, seed=12))
CLIP = synthetic.video(seconds=2, fps=5, width=96, height=96, kind="gif", seed=15)
TASK = "Given a web search query, retrieve relevant passages that answer the query"
TEXTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other. It gives weight to physical objects "
    "and is responsible for the movement of planets around the sun.",
]
# The vLLM-Ascend tutorial's curl body, verbatim.
TUTORIAL_BODY = """{
  "input": [
        "The capital of China is Beijing.",
        "Gravity is a force that attracts two bodies towards each other. It gives weight to physical objects and is responsible for the movement of planets around the sun."
    ]
}"""  # noqa: E501


def data_uri(blob: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(blob).decode()}"


def vectors(response) -> np.ndarray:
    return np.array([item.embedding for item in response.data], dtype=np.float32)


def assert_same(got: np.ndarray, expected: np.ndarray):
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-6


def direct(grpc_client, rows: list[dict]) -> np.ndarray:
    return embed(grpc_client, grpc, rows)


def test_sdk_base64_and_float_equal_a_direct_triton_call(sdk, grpc_client):
    expected = direct(grpc_client, [{"text": text} for text in TEXTS])
    as_base64 = sdk.embeddings.create(model="qwen3_vl_embedding", input=TEXTS)  # the SDK's default
    as_float = sdk.embeddings.create(model="qwen3_vl_embedding", input=TEXTS, encoding_format="float")
    assert_same(vectors(as_base64), expected)
    assert_same(vectors(as_float), expected)
    assert as_float.model == "qwen3_vl_embedding" and as_float.object == "list"
    assert [item.index for item in as_float.data] == [0, 1]


def test_a_query_with_its_instruction_three_ways(sdk, grpc_client):
    expected = direct(grpc_client, [{"text": "What is the capital of China?", "instruction": TASK}])
    convention = sdk.embeddings.create(
        model="qwen3_vl_embedding", input=f"Instruct: {TASK}\nQuery: What is the capital of China?"
    )
    extension = sdk.embeddings.create(
        model="qwen3_vl_embedding", input="What is the capital of China?", extra_body={"instruction": TASK}
    )
    assert_same(vectors(convention), expected)
    assert_same(vectors(extension), expected)
    document = direct(grpc_client, [{"text": "What is the capital of China?"}])
    assert np.abs(vectors(convention) - document).max() > 1e-3  # the instruction changes the vector


def test_dimensions_cut_the_vector_as_triton_does(sdk, grpc_client):
    expected = direct(grpc_client, [{"text": TEXTS[0], "dimensions": 64}])
    response = sdk.embeddings.create(model="qwen3_vl_embedding", input=TEXTS[0], dimensions=64)
    assert_same(vectors(response), expected)
    assert abs(np.linalg.norm(vectors(response)[0]) - 1) < 1e-5


def test_messages_with_images_videos_and_a_system_instruction(sdk, grpc_client):
    conversations = [
        [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": data_uri(PHOTO, "image/jpeg")}}],
            }
        ],
        [
            {
                "role": "user",
                "content": [{"type": "video_url", "video_url": {"url": data_uri(CLIP, "image/gif")}}],
            }
        ],
        [
            {"role": "system", "content": "Find it"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "everything"},
                    {"type": "image_url", "image_url": {"url": data_uri(PHOTO, "image/jpeg")}},
                    {"image_url": data_uri(SCREEN, "image/png")},
                    {"type": "video_url", "video_url": {"url": data_uri(CLIP, "image/gif")}},
                ],
            },
        ],
    ]
    expected = direct(
        grpc_client,
        [
            {"images": [PHOTO]},
            {"videos": [CLIP]},
            {"instruction": "Find it", "text": "everything", "images": [PHOTO, SCREEN], "videos": [CLIP]},
        ],
    )
    # vLLM's own multimodal example sends `messages` with the SDK's generic post.
    response = sdk.post(
        "/embeddings",
        body={"model": "qwen3_vl_embedding", "messages": conversations, "encoding_format": "float"},
        cast_to=CreateEmbeddingResponse,
    )
    assert_same(vectors(response), expected)
    single = sdk.post(
        "/embeddings",
        body={"messages": conversations[2], "encoding_format": "float"},
        cast_to=CreateEmbeddingResponse,
    )
    assert_same(vectors(single), expected[2:])


def test_the_tutorials_curl_body_gets_two_embeddings(gateway, grpc_client):
    status, _, body = post(f"{gateway.url}/v1/embeddings", TUTORIAL_BODY)
    assert status == 200, body
    assert body["object"] == "list" and body["id"].startswith("embd-")
    assert [item["index"] for item in body["data"]] == [0, 1]
    got = np.array([item["embedding"] for item in body["data"]], dtype=np.float32)
    assert_same(got, direct(grpc_client, [{"text": text} for text in TEXTS]))
    assert set(body["usage"]) == {
        "prompt_tokens",
        "total_tokens",
        "completion_tokens",
        "prompt_tokens_details",
    }


def test_a_long_list_is_split_at_the_ensembles_batch_limit(sdk, grpc_client):
    texts = [f"sentence number {index}" for index in range(150)]  # the ensemble takes 64 rows
    response = sdk.embeddings.create(model="qwen3_vl_embedding", input=texts)
    assert [item.index for item in response.data] == list(range(150))
    expected = direct(grpc_client, [{"text": text} for text in texts[60:70]])
    assert_same(vectors(response)[60:70], expected)


def test_token_ids_are_refused_in_the_official_format(gateway):
    status, _, body = post(f"{gateway.url}/v1/embeddings", {"input": [[9707, 11, 1879]]})
    assert status == 400
    assert "input[0] is a list of token ids" in body["error"]["message"]
    assert "input_format 'vllm'" in body["error"]["message"]
