"""A server started with COMPILE=on: the model steps compile their text forward at load, serve the official
vectors and scores for text of every length and for images, and never compile again while serving."""

from __future__ import annotations

import time
import urllib.request

import numpy as np
import pytest
import tritonclient.http as http

from backend.metrics import FLUSH_SECONDS
from backend.settings import SERVER_ENV_VARIABLES
from perf.lib.server_stats import parse_prometheus
from perf.lib.servers import environment
from tests.conftest import REPO
from tests.integration.conftest import embed, embed_async, rerank
from tools import synthetic

pytestmark = pytest.mark.server

PHOTO = synthetic.encode_image(synthetic.photo(320, 240, seed=31), "JPEG", quality=90)
WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex".split()


def text_of(words: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, size=words))


@pytest.fixture(scope="module")
def compiled_server(tiny_model_path, tiny_reranker_path, tmp_path_factory):
    from tools.triton_server import TritonServer

    log = tmp_path_factory.mktemp("triton-compiled") / "server.log"
    try:
        overrides = {**dict.fromkeys(SERVER_ENV_VARIABLES), "COMPILE": "on"}
        with environment(overrides), TritonServer(REPO / "model_repository", log_path=log) as running:
            yield running
    finally:
        print(f"server log: {log}")


@pytest.fixture
def client(compiled_server):
    client = http.InferenceServerClient(compiled_server.http_url, concurrency=8, network_timeout=120)
    yield client
    client.close()


def metric(server, name: str, model: str) -> float:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        samples = parse_prometheus(response.read().decode())
    return samples.get((name, (("model", model),)), 0.0)


def test_compiled_server_serves_the_official_vectors_for_every_shape(compiled_server, client, official):
    rows = [{"text": text_of(words, seed)} for seed, words in enumerate((1, 3, 17, 60, 240, 900))]
    rows.append({"text": "a photo", "images": [PHOTO]})  # vision rows run eager beside compiled text
    rows.append({"text": "short query", "instruction": "Find it", "dimensions": 64})
    # One request per row, all in flight: the model step batches them into assorted shapes.
    pending = [embed_async(client, [row]) for row in rows] + [embed_async(client, rows[:3])]
    results = [request.get_result().as_numpy("EMBEDDING") for request in pending]
    for row, result in zip(rows, results):
        [expected] = official.embed([row])
        assert np.abs(result[0][: expected.shape[0]] - expected).max() <= 1e-5
    assert np.abs(results[-1] - np.concatenate(results[:3])).max() <= 1e-5

    time.sleep(2 * FLUSH_SECONDS)  # the next execute sends the metrics the stub has buffered
    assert embed(client, http, [{"text": text_of(5, 99)}]).shape == (1, 128)
    model = "qwen3_vl_embedding_model"
    assert metric(compiled_server, "qwen3vl_compiled_micro_batches_total", model) > 0
    assert metric(compiled_server, "qwen3vl_recompiles_total", model) == 0
    log = compiled_server.log_path.read_text()
    assert "text forward compiled in" in log
    assert "more graph(s)" not in log


def test_compiled_reranker_scores_like_the_official_one(compiled_server, client, tiny_reranker_path):
    from tests.reference import OfficialReranker

    query = {"text": "a dog on the beach"}
    documents = [{"text": text_of(words, 50 + words)} for words in (2, 40, 300)] + [{"images": [PHOTO]}]
    scores = rerank(client, http, query, documents)
    expected = OfficialReranker(tiny_reranker_path).score(query, documents)
    assert np.abs(scores - np.asarray(expected)).max() <= 1e-5
    time.sleep(2 * FLUSH_SECONDS)
    rerank(client, http, query, documents[:1])
    assert metric(compiled_server, "qwen3vl_compiled_micro_batches_total", "qwen3_vl_reranker_model") > 0
    assert metric(compiled_server, "qwen3vl_recompiles_total", "qwen3_vl_reranker_model") == 0
