"""The compatibility mode (vLLM's raw completion path) and real usage counts, through the real gateway
and the ensembles' RAW / TOKEN_IDS inputs and TOKEN_COUNT outputs."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpc

from tests.integration.conftest import embedding_inputs, rerank_inputs
from tests.integration.gateway_process import GatewayProcess, post
from tests.reference import conversation
from tools import synthetic

pytestmark = pytest.mark.server

PHOTO = synthetic.encode_image(synthetic.photo(448, 448, seed=41), "JPEG", quality=90)
TEXTS = ["The capital of China is Beijing.", "Instruct: find it\nQuery: Gravity attracts bodies."]


@pytest.fixture(scope="module")
def vllm_default(server):
    """A gateway whose default input format is vLLM's."""
    with GatewayProcess(server.grpc_url, GATEWAY_INPUT_FORMAT="vllm") as running:
        yield running


@torch.no_grad()
def raw_reference(official, ids: list[int]) -> np.ndarray:
    """transformers on raw token ids: last token's hidden state, L2-normalised (vLLM's LAST pooling)."""
    hidden = official.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
    return torch.nn.functional.normalize(hidden, p=2, dim=-1).numpy()


def embeddings(url: str, body: dict) -> tuple[np.ndarray, dict]:
    status, _, answer = post(f"{url}/v1/embeddings", {**body, "encoding_format": "float"})
    assert status == 200, answer
    return np.array([item["embedding"] for item in answer["data"]], dtype=np.float32), answer["usage"]


def test_the_vllm_format_equals_transformers_on_raw_tokens(gateway, official, tiny_tokenizer):
    got, usage = embeddings(gateway.url, {"input": TEXTS, "input_format": "vllm"})
    ids = [tiny_tokenizer(text)["input_ids"] for text in TEXTS]
    expected = np.stack([raw_reference(official, row) for row in ids])
    assert np.abs(got - expected).max() <= 1e-5
    assert usage["prompt_tokens"] == sum(len(row) for row in ids)
    tokens, _ = embeddings(gateway.url, {"input": ids, "input_format": "vllm"})
    assert np.abs(tokens - got).max() <= 1e-6
    official_format, _ = embeddings(gateway.url, {"input": TEXTS})
    assert np.abs(official_format - got).max() > 1e-3  # the two formats really differ


def test_the_server_default_and_the_request_field(vllm_default, gateway):
    raw, _ = embeddings(gateway.url, {"input": TEXTS, "input_format": "vllm"})
    by_default, _ = embeddings(vllm_default.url, {"input": TEXTS})
    assert np.abs(by_default - raw).max() <= 1e-6
    official, _ = embeddings(gateway.url, {"input": TEXTS})
    overridden, _ = embeddings(vllm_default.url, {"input": TEXTS, "input_format": "official"})
    assert np.abs(overridden - official).max() <= 1e-6
    status, _, body = post(f"{vllm_default.url}/v1/embeddings", {"input": [[9707, 11, 1879]]})
    assert status == 200, body


def test_truncate_prompt_tokens_keeps_the_last_tokens_as_vllm_does(gateway, official, tiny_tokenizer):
    text = "one two three four five six seven eight nine ten"
    ids = tiny_tokenizer(text)["input_ids"]
    got, usage = embeddings(gateway.url, {"input": text, "input_format": "vllm", "truncate_prompt_tokens": 4})
    assert np.abs(got[0] - raw_reference(official, ids[-4:])).max() <= 1e-5
    assert usage["prompt_tokens"] == 4
    whole, _ = embeddings(gateway.url, {"input": text, "input_format": "vllm", "truncate_prompt_tokens": -1})
    assert np.abs(whole[0] - raw_reference(official, ids)).max() <= 1e-5
    status, _, body = post(
        f"{gateway.url}/v1/embeddings",
        {"input": text, "input_format": "vllm", "truncate_prompt_tokens": 10**6},
    )
    assert status == 400 and "max_model_len" in body["error"]["message"]


def test_usage_counts_the_tokens_the_model_ran_placeholders_included(gateway, grpc_client, official):
    texts = ["The capital of China is Beijing.", "Gravity attracts bodies."]
    _, usage = embeddings(gateway.url, {"input": texts})
    prompts = official.processor.apply_chat_template(
        [conversation(text) for text in texts], add_generation_prompt=True, tokenize=False
    )
    expected = sum(len(official.processor.tokenizer(prompt)["input_ids"]) for prompt in prompts)
    assert usage == {
        "prompt_tokens": expected,
        "total_tokens": expected,
        "completion_tokens": 0,
        "prompt_tokens_details": None,
    }
    photo = "data:image/jpeg;base64," + base64.b64encode(PHOTO).decode()
    message = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": photo}}]}]
    _, usage = embeddings(gateway.url, {"messages": message})
    direct = grpc_client.infer("qwen3_vl_embedding", embedding_inputs(grpc, [{"images": [PHOTO]}]))
    image_tokens = int(direct.as_numpy("TOKEN_COUNT")[0, 0])
    assert usage["prompt_tokens"] == image_tokens > 100  # 448x448 -> 196 placeholder tokens alone

    documents = [{"text": "Beijing"}, {"text": "a much longer document about gravity and planets"}]
    direct = grpc_client.infer("qwen3_vl_reranker", rerank_inputs(grpc, {"text": "capital"}, documents))
    status, _, body = post(
        f"{gateway.url}/v1/rerank", {"query": "capital", "documents": [d["text"] for d in documents]}
    )
    assert status == 200, body
    assert body["usage"]["prompt_tokens"] == int(direct.as_numpy("TOKEN_COUNT").sum())
