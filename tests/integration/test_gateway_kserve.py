"""The KServe v2 REST protocol at the gateway (issue 19, item 2): tritonclient.http and perf_analyzer -i http
work against the gateway as against Triton's own HTTP port, with the same vectors as gRPC direct, and the
bodies that crash or bloat tritonserver 2.51's HTTP front are answered 400/413/415 in milliseconds with
no memory kept. perf/results/cpu-x86_64-2c/2026-12-07/gateway-kserve.md has the figures
(perf/drills/kserve_hostile.py measures them)."""

from __future__ import annotations

import json
import subprocess
import urllib.request

import numpy as np
import pytest

from perf.drills import kserve_hostile
from perf.drills.hostile_bodies import peak_rss_mb
from perf.lib.perf_analyzer import perf_analyzer_binary, perf_analyzer_env
from tests.integration.gateway_process import GatewayProcess

pytestmark = pytest.mark.server
MODEL = "qwen3_vl_embedding"
RERANKER = "qwen3_vl_reranker"
TEXTS = [b"hello world", b"a photo of a cat", "héllo".encode()]


@pytest.fixture(scope="module")
def door(server):
    """A gateway of this module's own: the hostile bodies' memory is measured on it alone."""
    with GatewayProcess(server.grpc_url) as running:
        yield running


@pytest.fixture
def rest(door):
    import tritonclient.http as http

    client = http.InferenceServerClient(door.url.removeprefix("http://"), network_timeout=120)
    yield client
    client.close()


def text_inputs(module, binary: bool | None = None, dimensions: int | None = None):
    options = {} if binary is None else {"binary_data": binary}
    text = module.InferInput("TEXT", [len(TEXTS), 1], "BYTES")
    text.set_data_from_numpy(np.array([[each] for each in TEXTS], dtype=object), **options)
    inputs = [text]
    if dimensions is not None:
        dims = module.InferInput("DIMENSIONS", [len(TEXTS), 1], "INT32")
        dims.set_data_from_numpy(np.full((len(TEXTS), 1), dimensions, dtype=np.int32), **options)
        inputs.append(dims)
    return inputs


@pytest.mark.parametrize("binary", [True, False], ids=["binary tensors", "JSON tensors"])
def test_tritonclient_http_through_the_gateway_gives_the_vectors_of_grpc_direct(rest, grpc_client, binary):
    import tritonclient.grpc as grpc
    import tritonclient.http as http

    for dimensions in (None, 64):
        direct = grpc_client.infer(MODEL, text_inputs(grpc, dimensions=dimensions))
        outputs = [
            http.InferRequestedOutput(name, binary_data=binary) for name in ("EMBEDDING", "TOKEN_COUNT")
        ]
        answer = rest.infer(MODEL, text_inputs(http, binary, dimensions), outputs=outputs, request_id="r7")
        np.testing.assert_array_equal(answer.as_numpy("EMBEDDING"), direct.as_numpy("EMBEDDING"))
        np.testing.assert_array_equal(answer.as_numpy("TOKEN_COUNT"), direct.as_numpy("TOKEN_COUNT"))
        assert answer.get_response()["id"] == "r7"
    # No outputs named: all of them, binary (tritonclient's default), versioned path.
    answer = rest.infer(MODEL, text_inputs(http, binary), model_version="1")
    direct = grpc_client.infer(MODEL, text_inputs(grpc))
    np.testing.assert_array_equal(answer.as_numpy("EMBEDDING"), direct.as_numpy("EMBEDDING"))


def test_model_readiness_metadata_config_and_stats_match_tritons_own_http(rest, server):
    import tritonclient.http as http

    direct = http.InferenceServerClient(server.http_url)
    try:
        assert rest.is_server_live() and rest.is_server_ready()
        assert rest.is_model_ready(MODEL) and rest.is_model_ready(RERANKER, "1")
        assert not rest.is_model_ready("no_such_model")
        assert rest.get_server_metadata() == direct.get_server_metadata()
        for model in (MODEL, RERANKER, f"{MODEL}_model"):
            assert rest.get_model_metadata(model) == direct.get_model_metadata(model)
            assert rest.get_model_config(model) == direct.get_model_config(model)
        stats = rest.get_inference_statistics(MODEL)["model_stats"][0]
        assert stats["name"] == MODEL and isinstance(stats["inference_stats"]["success"]["count"], int)
    finally:
        direct.close()


def _status(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (
            "no_such_model",
            {"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": ["a"]}]},
        ),
        (MODEL, {"inputs": [{"name": "NOPE", "shape": [1, 1], "datatype": "BYTES", "data": ["a"]}]}),
        (
            MODEL,
            {
                "inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": ["a"]}],
                "outputs": [{"name": "X"}],
            },
        ),
        (MODEL, {"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "INT32", "data": [1]}]}),
    ],
    ids=["unknown model", "unknown input", "unknown output", "wrong datatype"],
)
def test_valid_but_wrong_requests_get_tritons_http_status(door, server, model, body):
    data = json.dumps(body).encode()
    direct_status, direct = _status(f"http://{server.http_url}/v2/models/{model}/infer", data)
    status, answer = _status(f"{door.url}/v2/models/{model}/infer", data)
    assert status == direct_status and set(answer) == {"error"} == set(direct)
    assert status in (400, 404)


def test_perf_analyzer_http_measures_through_the_gateway(door, tmp_path):
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"data": [{"TEXT": {"content": ["hello world"], "shape": [1]}}]}))
    command = [
        perf_analyzer_binary(),
        *("-m", MODEL, "-i", "http", "-u", door.url.removeprefix("http://")),
        *("--input-data", str(data), "--concurrency-range", "2", "-f", str(tmp_path / "out.csv")),
        # A fixed count, no stability windows: a loaded test host rarely gives stable ones.
        *("--request-count", "16"),
    ]
    for attempt in range(2):
        try:
            result = subprocess.run(
                command, env=perf_analyzer_env(), capture_output=True, text=True, timeout=240
            )
            break
        except subprocess.TimeoutExpired:
            # perf_analyzer 2.50 sometimes never exits in --request-count mode (perf/lib/perf_analyzer.py).
            assert attempt == 0, "perf_analyzer hung twice"
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Composing models" in result.stdout  # it read the ensemble's config and its steps' statistics
    rows = (tmp_path / "out.csv").read_text().splitlines()
    assert float(rows[1].split(",")[1]) > 0  # Inferences/Second


@pytest.mark.parametrize(
    ("build", "status", "fragment"),
    [
        (kserve_hostile.deep_json, 400, "nested too deeply"),
        (kserve_hostile.deep_data, 400, "nested too deeply"),
        (kserve_hostile.gzip_bomb, 415, "Content-Encoding 'gzip' is not accepted"),
        (kserve_hostile.deflate_bomb, 415, "Content-Encoding 'deflate' is not accepted"),
        (kserve_hostile.shape_mismatch, 400, "input 'DIMENSIONS': binary_data_size is 8 bytes"),
        (kserve_hostile.batch_wrap, 400, "input 'DIMENSIONS': shape[0] = 1099511627776"),
        (kserve_hostile.oversize, 413, "over the limit of 67108864 bytes"),
    ],
    ids=["deep JSON", "deep data", "gzip bomb", "deflate bomb", "shape/bytes", "batch 2^40", "oversize"],
)
def test_hostile_bodies_are_refused_in_milliseconds_with_no_memory_kept(door, build, status, fragment):
    rss_before, _ = peak_rss_mb(door.pid)
    result = kserve_hostile.attack(door.url, build())
    assert result["status"] == status, result
    assert fragment in result["message"], result
    assert result["seconds"] < 1, result
    assert result["small_statuses"] == [200] and result["small_worst"] < 1, result
    rss_after, peak = peak_rss_mb(door.pid)
    assert peak < 1000 and rss_after < rss_before + 100, (rss_before, rss_after, peak)
    assert door.is_running()  # nothing restarted


def test_the_client_library_over_http_to_the_gateway_gives_tritons_vectors(door, server):
    from qwen3vl_client import EmbeddingClient

    texts = ["The capital of China is Beijing.", "Gravity attracts bodies."]
    with (
        EmbeddingClient(door.url.removeprefix("http://")) as through,
        EmbeddingClient(server.grpc_url, "grpc") as direct,
    ):
        np.testing.assert_array_equal(through.embed(texts, dimensions=64), direct.embed(texts, dimensions=64))
        np.testing.assert_array_equal(
            through.rerank("capital of China", texts).scores, direct.rerank("capital of China", texts).scores
        )
