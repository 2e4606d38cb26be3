"""Compact vectors through the real gateway: /v1/embeddings' base64 in every vLLM embed_dtype (openai SDK),
and Cohere's /v2/embed with every embedding type, equal to the embedding ensemble's own compact outputs."""

from __future__ import annotations

import base64
import importlib
import json

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpc

from tests.integration.conftest import embed
from tests.integration.gateway_process import post
from tools import synthetic

pytestmark = pytest.mark.server
quantize = importlib.import_module("qwen3vl_client.bulk.quantize")

TEXTS = ["The capital of China is Beijing.", "Gravity attracts bodies.", "A red bicycle."]
TASK = "Given a web search query, retrieve relevant passages that answer the query"
PHOTO = synthetic.encode_image(synthetic.photo(224, 224, seed=21), "JPEG", quality=90)
TORCH = {"float16": torch.float16, "bfloat16": torch.bfloat16, "fp8_e4m3": torch.float8_e4m3fn}


def raw_base64(sdk, **options) -> list[bytes]:
    response = sdk.embeddings.with_raw_response.create(
        model="qwen3_vl_embedding", input=TEXTS, encoding_format="base64", extra_body=options
    )
    body = json.loads(response.http_response.text)
    return [base64.b64decode(item["embedding"]) for item in body["data"]]


@pytest.mark.parametrize("embed_dtype", list(TORCH))
@pytest.mark.parametrize("endianness", ["native", "big"])
def test_base64_in_each_embed_dtype_is_vllms_cast(sdk, grpc_client, embed_dtype, endianness):
    expected = embed(grpc_client, grpc, [{"text": text} for text in TEXTS])
    got = raw_base64(sdk, embed_dtype=embed_dtype, endianness=endianness)
    for row, blob in zip(expected, got):
        cast = torch.from_numpy(np.array(row)).to(TORCH[embed_dtype])
        words = cast.view(torch.int16 if cast.element_size() == 2 else torch.uint8).numpy()
        if endianness == "big":
            words = words.byteswap()
        assert blob == words.tobytes()


def test_the_sdks_default_is_unchanged(sdk, grpc_client):
    expected = embed(grpc_client, grpc, [{"text": text} for text in TEXTS])
    response = sdk.embeddings.create(model="qwen3_vl_embedding", input=TEXTS)  # base64, float32
    got = np.array([item.embedding for item in response.data], dtype=np.float32)
    assert np.array_equal(got, expected)


def triton_compact(grpc_client, rows: list[dict], types: list[str]) -> dict[str, np.ndarray]:
    """The ensemble's own compact outputs for rows of {text, images, instruction, dimensions}."""
    from tests.integration.conftest import embedding_inputs

    inputs = embedding_inputs(grpc, rows)
    names = np.array([[t.encode() for t in types]] * len(rows), dtype=object)
    value = grpc.InferInput("EMBEDDING_TYPES", list(names.shape), "BYTES")
    value.set_data_from_numpy(names)
    result = grpc_client.infer("qwen3_vl_embedding", [*inputs, value])
    from backend.vectors import OUTPUTS

    return {"float": result.as_numpy("EMBEDDING")} | {t: result.as_numpy(OUTPUTS[t][0]) for t in types}


def test_cohere_embed_gives_every_type_as_the_ensemble_does(gateway, grpc_client):
    types = ["int8", "uint8", "binary", "ubinary"]
    body = {
        "model": "qwen3_vl_embedding",
        "texts": TEXTS,
        "input_type": "search_query",
        "output_dimension": 64,
        "embedding_types": ["float", *types, "base64"],
    }
    status, _, answer = post(f"{gateway.url}/v2/embed", body)
    assert status == 200, answer
    assert answer["response_type"] == "embeddings_by_type" and answer["texts"] == TEXTS
    assert answer["meta"]["api_version"] == {"version": "2"}
    assert answer["meta"]["billed_units"]["input_tokens"] > 0
    assert list(answer["embeddings"]) == ["float", *types, "base64"]
    rows = [{"text": text, "instruction": TASK, "dimensions": 64} for text in TEXTS]
    expected = triton_compact(grpc_client, rows, types)
    floats = np.array(answer["embeddings"]["float"], dtype=np.float32)
    assert np.abs(floats - expected["float"]).max() <= 1e-6
    for name in types:
        got = np.array(answer["embeddings"][name], dtype=quantize.STORAGE_DTYPES[name])
        assert got.tobytes() == expected[name].tobytes(), name
    decoded = [np.frombuffer(base64.b64decode(b), dtype="<f4") for b in answer["embeddings"]["base64"]]
    assert np.array_equal(np.array(decoded), floats)


def test_cohere_images_and_inputs(gateway, grpc_client):
    uri = f"data:image/jpeg;base64,{base64.b64encode(PHOTO).decode()}"
    status, _, by_images = post(f"{gateway.url}/v2/embed", {"images": [uri], "embedding_types": ["ubinary"]})
    assert status == 200, by_images
    assert list(by_images["embeddings"]) == ["ubinary"] and by_images["texts"] is None
    parts = [{"type": "text", "text": "a photo"}, {"type": "image_url", "image_url": {"url": uri}}]
    status, _, by_inputs = post(f"{gateway.url}/v2/embed", {"inputs": [{"content": parts}]})
    assert status == 200, by_inputs
    expected = triton_compact(grpc_client, [{"images": [PHOTO]}], ["ubinary"])["ubinary"]
    assert np.array(by_images["embeddings"]["ubinary"], dtype=np.uint8).tobytes() == expected.tobytes()
    direct = embed(grpc_client, grpc, [{"text": "a photo", "images": [PHOTO]}])
    assert np.abs(np.array(by_inputs["embeddings"]["float"]) - direct).max() <= 1e-6


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"texts": ["a"], "images": ["data:,"]}, 400, "Exactly one of texts, images, or inputs"),
        ({"texts": []}, 400, "Exactly one of texts, images, or inputs"),
        ({"texts": ["a"], "embedding_types": ["int4"]}, 400, "embedding_types"),
        ({"texts": ["a"], "truncate": "START"}, 501, "truncate 'START' is not supported"),
        ({"texts": ["a"], "model": "nope"}, 404, "nope"),
    ],
)
def test_cohere_errors(gateway, body, status, fragment):
    got_status, _, answer = post(f"{gateway.url}/v2/embed", body)
    assert got_status == status, answer
    assert fragment in answer["error"]["message"]
