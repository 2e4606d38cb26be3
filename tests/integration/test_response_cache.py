"""Triton's response cache on the two ensembles (response_cache in their config.pbtxt), with a local cache
as the Helm chart turns on: an identical request is a hit answered with the same vector without running the
models; a request that differs only in DIMENSIONS or INSTRUCTION is a miss."""

from __future__ import annotations

import time

import numpy as np
import pytest

from backend.settings import SERVER_ENV_VARIABLES
from tests.conftest import REPO
from tests.integration.conftest import embedding_inputs, rerank_inputs

pytestmark = pytest.mark.server
CACHE_BYTES = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def cached_server(tiny_model_path, tiny_reranker_path, tmp_path_factory):
    from tools.triton_server import TritonServer

    log = tmp_path_factory.mktemp("triton-cache") / "server.log"
    with pytest.MonkeyPatch.context() as patch:
        # Deployment overrides set in the caller's shell would change what the tests check: unset them.
        for name in SERVER_ENV_VARIABLES:
            patch.delenv(name, raising=False)
        server = TritonServer(
            REPO / "model_repository", log_path=log, extra_args=[f"--cache-config=local,size={CACHE_BYTES}"]
        )
        with server as running:
            yield running


@pytest.fixture
def client(cached_server):
    import tritonclient.http as http

    client = http.InferenceServerClient(cached_server.http_url)
    yield client
    client.close()


def cache_counts(client, model: str) -> tuple[int, int, int]:
    """(hits, misses, executions of the model step) so far, once the executions have caught up with the
    misses (single-row requests: one execution each) or 10 s have passed. The model step answers through
    its response sender, and Triton counts the execution when it releases the request, just after the
    answer has left."""
    deadline = time.monotonic() + 10
    while (counts := _counts(client, model))[2] < counts[1] and time.monotonic() < deadline:
        time.sleep(0.05)
    return counts


def _counts(client, model: str) -> tuple[int, int, int]:
    stats = client.get_inference_statistics(model)["model_stats"][0]["inference_stats"]
    step = client.get_inference_statistics(f"{model}_model")["model_stats"][0]
    return int(stats["cache_hit"]["count"]), int(stats["cache_miss"]["count"]), int(step["inference_count"])


def embed(client, row: dict) -> np.ndarray:
    import tritonclient.http as http

    return client.infer("qwen3_vl_embedding", embedding_inputs(http, [row])).as_numpy("EMBEDDING")


def test_repeated_embedding_request_is_a_cache_hit_with_the_same_vector(client):
    row = {"text": "The capital of China is Beijing.", "dimensions": 0}
    hits, misses, runs = cache_counts(client, "qwen3_vl_embedding")
    first = embed(client, row)
    second = embed(client, row)
    after = cache_counts(client, "qwen3_vl_embedding")
    assert after[:2] == (hits + 1, misses + 1)
    assert after[2] == runs + 1  # the model step ran once, for the miss
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("change", [{"dimensions": 64}, {"instruction": "Find the capital."}], ids=str)
def test_different_dimensions_or_instruction_is_a_miss(client, change):
    row = {"text": "Gravity attracts bodies.", "dimensions": 0}
    embed(client, row)  # cached now (or already)
    hits, misses, runs = cache_counts(client, "qwen3_vl_embedding")
    changed = embed(client, {**row, **change})
    assert cache_counts(client, "qwen3_vl_embedding") == (hits, misses + 1, runs + 1)
    original = embed(client, row)
    assert cache_counts(client, "qwen3_vl_embedding")[0] == hits + 1
    if "dimensions" in change:
        assert changed.shape[1] == 64 and original.shape[1] > 64
    else:
        assert not np.allclose(changed, original)


def test_repeated_rerank_request_is_a_cache_hit(client):
    import tritonclient.http as http

    inputs = rerank_inputs(
        http, {"text": "What is the capital of China?"}, [{"text": "Beijing."}, {"text": "Paris."}]
    )
    hits, misses, _ = cache_counts(client, "qwen3_vl_reranker")
    first = client.infer("qwen3_vl_reranker", inputs).as_numpy("SCORE")
    second = client.infer("qwen3_vl_reranker", inputs).as_numpy("SCORE")
    assert cache_counts(client, "qwen3_vl_reranker")[:2] == (hits + 1, misses + 1)
    np.testing.assert_array_equal(first, second)
