"""Every error status of the gateway, with vLLM's body shape, from real requests to real processes:
the default gateway, a strict one (API key, small limits, URL fetching on, several model names) and one
whose Triton is not there."""

from __future__ import annotations

import base64
import functools
import http.server
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration.gateway_process import GatewayProcess, get, post
from tools import synthetic
from tools.ports import free_port

pytestmark = pytest.mark.server

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
PHOTO = synthetic.encode_image(synthetic.photo(224, 224, seed=31), "PNG")
BODY_LIMIT = 200_000


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    (folder / "photo.png").write_bytes(PHOTO)
    return folder


@pytest.fixture(scope="module")
def media_server(media_dir):
    """A local HTTP server for the URL-fetching tests (127.0.0.1 only)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(media_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def strict(server, media_dir):
    environment = {
        "GATEWAY_API_KEY": KEY,
        "GATEWAY_MAX_BODY_BYTES": str(BODY_LIMIT),
        "GATEWAY_MAX_IN_FLIGHT": "1",
        "GATEWAY_MAX_WAITING": "0",
        "GATEWAY_ALLOW_URL_FETCH": "true",
        "GATEWAY_ALLOWED_LOCAL_MEDIA_PATH": str(media_dir),
        "SERVED_MODEL_NAME": "Qwen/Qwen3-VL-Embedding-8B,qwen3_vl_embedding",
    }
    with GatewayProcess(server.grpc_url, **environment) as running:
        yield running


@pytest.fixture(scope="module")
def latency_first(server):
    """The README's latency profile (a latency target), with a shorter burst allowance."""
    with GatewayProcess(
        server.grpc_url, GATEWAY_LATENCY_TARGET_RATIO="1.25", GATEWAY_BURST_SECONDS="0.5"
    ) as running:
        yield running


@pytest.fixture(scope="module")
def orphan():
    """A gateway whose Triton is not running."""
    with GatewayProcess(f"127.0.0.1:{free_port()}", wait_for="/version") as running:
        yield running


def assert_error(response, status: int, type_name: str, fragment: str = ""):
    got_status, headers, body = response
    assert got_status == status, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["code"] == status and body["error"]["type"] == type_name
    assert fragment in body["error"]["message"], body
    return headers, body["error"]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"input": ["a",', "malformed JSON"),
        (b"", "body is empty"),
        (b'["a list"]', "must be a JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"input": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
        (b'{"input": 3}', "input"),
        (b'{"model": "qwen3_vl_embedding"}', "exactly one of input and messages"),
        (b'{"input": "a", "normalize": true}', "normalize"),
        (b'{"input": "a", "dimensions": 0}', "dimensions"),
        (b'{"input": []}', "input is empty"),
        (b'{"input": ["a", ""]}', "input[1] is an empty string"),
        (b'{"input": "a", "truncate_prompt_tokens": 5}', "truncate_prompt_tokens"),
        (
            b'{"messages": [{"role": "user", "content": [{"image_url": {"url": "http://127.0.0.1:1/x.png"}}]}]}',
            "disabled",
        ),
        (
            b'{"messages": [{"role": "user", "content": [{"image_url": {"url": "file:///etc/passwd"}}]}]}',
            "disabled",
        ),
        (
            b'{"messages": [{"role": "user", "content": [{"image_url": "data:image/png;base64,@@"}]}]}',
            "messages[0].content[0]: data URI is not valid base64",
        ),
    ],
)
def test_malformed_and_invalid_bodies_get_400(gateway, raw, fragment):
    assert_error(post(f"{gateway.url}/v1/embeddings", raw), 400, "BadRequestError", fragment)


def test_a_huge_array_and_a_wrong_content_type_get_400(gateway):
    huge = {"input": ["x"] * 3000}  # over GATEWAY_MAX_ITEMS
    assert_error(post(f"{gateway.url}/v1/embeddings", huge), 400, "BadRequestError", "over the limit of 2048")
    form = post(
        f"{gateway.url}/v1/embeddings", "input=a", {"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert_error(form, 400, "BadRequestError", "Content-Type must be application/json")


def test_an_item_the_ensemble_refuses_is_named(gateway):
    bad = "data:image/png;base64," + base64.b64encode(b"not an image").decode()
    conversations = [
        [{"role": "user", "content": "fine"}],
        [
            {
                "role": "user",
                "content": [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": bad}}],
            }
        ],
    ]
    _, error = assert_error(
        post(f"{gateway.url}/v1/embeddings", {"messages": conversations}), 400, "BadRequestError"
    )
    assert error["message"].startswith("messages[1]: IMAGE[0]: ") and error["param"] == "messages"
    too_narrow = post(f"{gateway.url}/v1/embeddings", {"input": ["a", "b"], "dimensions": 8})
    assert_error(too_narrow, 400, "BadRequestError", "must be between 64 and")


def test_unknown_model_route_and_method_get_404_and_405(gateway):
    assert_error(
        post(f"{gateway.url}/v1/embeddings", {"model": "nope", "input": "a"}), 404, "NotFoundError", "nope"
    )
    assert_error(get(f"{gateway.url}/v1/chat/completions"), 404, "NotFoundError")
    assert_error(get(f"{gateway.url}/v1/embeddings"), 405, "MethodNotAllowedError")


def test_unsupported_options_get_501(gateway):
    for request in (
        {"input": "a", "encoding_format": "bytes"},
        {"input": "a", "encoding_format": "bytes_only"},
    ):
        assert_error(post(f"{gateway.url}/v1/embeddings", request), 501, "NotImplementedError")


def test_embed_dtypes_vllm_does_not_know_get_400(gateway):
    """embed_dtype bfloat16 is served since compact vectors (test_gateway_compact); values outside vLLM's
    lists are refused by the schema, as vLLM refuses them, with the values it takes."""
    fragment = "Input should be 'float32', 'float16', 'bfloat16', 'fp8_e4m3' or 'fp8_e5m2'"
    request = {"input": "a", "encoding_format": "base64", "embed_dtype": "int8"}
    _, error = assert_error(post(f"{gateway.url}/v1/embeddings", request), 400, "BadRequestError", fragment)
    assert "embed_dtype" in error["message"]
    request = {"input": "a", "encoding_format": "base64", "endianness": "middle"}
    fragment = "Input should be 'native', 'big' or 'little'"
    assert_error(post(f"{gateway.url}/v1/embeddings", request), 400, "BadRequestError", fragment)


def test_the_api_key_is_required_where_set_and_only_there(strict, gateway):
    request = {"model": "Qwen/Qwen3-VL-Embedding-8B", "input": "a"}
    assert_error(post(f"{strict.url}/v1/embeddings", request), 401, "AuthenticationError")
    assert_error(
        post(f"{strict.url}/v1/embeddings", request, {"Authorization": "Bearer wrong"}),
        401,
        "AuthenticationError",
    )
    assert_error(get(f"{strict.url}/v1/models"), 401, "AuthenticationError")
    status, _, body = post(f"{strict.url}/v1/embeddings", request, AUTH)
    assert status == 200 and body["model"] == "Qwen/Qwen3-VL-Embedding-8B"
    for path in ("/health", "/ping", "/version", "/metrics"):
        assert get(strict.url + path)[0] == 200, path
    assert post(f"{gateway.url}/v1/embeddings", {"input": "a"})[0] == 200  # no key set: none needed


def test_a_body_over_the_limit_gets_413(strict):
    request = {"input": "a" * (BODY_LIMIT + 10)}
    assert_error(post(f"{strict.url}/v1/embeddings", request, AUTH), 413, "RequestEntityTooLargeError")


def test_url_fetching_when_allowed(strict, media_server, media_dir, grpc_client):
    import tritonclient.grpc as grpc

    from tests.integration.conftest import embed

    expected = embed(grpc_client, grpc, [{"images": [PHOTO]}])[0]
    for url in (f"{media_server}/photo.png", f"file://{media_dir}/photo.png"):
        body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}
        status, _, answer = post(f"{strict.url}/v1/embeddings", body, AUTH)
        assert status == 200, answer
        assert max(abs(a - b) for a, b in zip(answer["data"][0]["embedding"], expected)) <= 1e-6
    for url, fragment in (
        (f"{media_server}/missing.png", "HTTP 404"),
        ("file:///etc/hostname", "outside the allowed media directory"),
    ):
        body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}
        assert_error(post(f"{strict.url}/v1/embeddings", body, AUTH), 400, "BadRequestError", fragment)


def test_work_that_cannot_wait_gets_503_with_retry_after(strict):
    """One request in flight and no waiting room: of a concurrent handful, some are shed."""
    body = {"input": ["a sentence to embed " * 20] * 16}

    def call(_):
        return post(f"{strict.url}/v1/embeddings", body, AUTH)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(call, range(8)))
    statuses = sorted(status for status, _, _ in responses)
    assert 200 in statuses and 503 in statuses, statuses
    for response in responses:
        if response[0] == 503:
            headers, error = assert_error(response, 503, "ServiceUnavailableError", "overloaded")
            assert int(headers["Retry-After"]) >= 1


def test_with_a_latency_target_overload_is_refused_at_once_and_what_is_admitted_is_exact(latency_first):
    """An open loop far past capacity: once overload is told from a burst, a request that finds every slot
    taken is refused at once, saying so, instead of waiting; every request is answered 200 or 503, and the
    admitted ones carry the vector of the same text sent alone."""
    # ~480 tokens: at ~40 tokens the tiny model served all 300 a second on a quiet host (no overload), and
    # since the CPU lanes (2026-12-07) it served ~300 a second of ~160 tokens too.
    url, body = f"{latency_first.url}/v1/embeddings", {"input": "a sentence to embed " * 120}
    status, _, alone = post(url, body)
    assert status == 200, alone
    expected = alone["data"][0]["embedding"]
    rate, seconds = 300, 4.0  # the tiny model serves far fewer of these a second on 2 cores
    futures = []
    with ThreadPoolExecutor(256) as pool:
        start = time.monotonic()
        for index in range(int(rate * seconds)):
            time.sleep(max(0.0, start + index / rate - time.monotonic()))
            futures.append(pool.submit(post, url, body))
        responses = [future.result() for future in futures]
    statuses = {status for status, _, _ in responses}
    assert statuses <= {200, 503}, statuses
    refused = [
        assert_error(response, 503, "ServiceUnavailableError")[1]
        for response in responses
        if response[0] == 503
    ]
    assert any("every in-flight slot is taken" in error["message"] for error in refused), refused[:3]
    admitted = [answer["data"][0]["embedding"] for status, _, answer in responses if status == 200]
    assert admitted
    assert max(abs(a - b) for vector in admitted for a, b in zip(vector, expected)) <= 1e-6


def test_without_triton_health_and_requests_get_503_with_retry_after(orphan):
    headers, _ = assert_error(get(f"{orphan.url}/health"), 503, "ServiceUnavailableError", "not ready")
    assert headers["Retry-After"] == "1"
    headers, _ = assert_error(
        post(f"{orphan.url}/v1/embeddings", {"input": "a"}), 503, "ServiceUnavailableError"
    )
    assert headers["Retry-After"] == "1"
    assert get(f"{orphan.url}/v1/models")[0] == 200  # listed without their limits
