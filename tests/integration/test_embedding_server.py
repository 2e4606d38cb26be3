"""The embedding ensemble served by a real tritonserver, checked against the official pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpc
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import embed, embed_async, settled_stats
from tools import synthetic

pytestmark = pytest.mark.server

PHOTO = synthetic.encode_image(synthetic.photo(448, 448, seed=11), "JPEG", quality=90)
SCREEN = synthetic.encode_image(synthetic.screenshot(1280, 720, seed=12))
CLIP_MP4 = synthetic.video(seconds=8, fps=24, width=320, height=240, kind="mp4", seed=13)
CLIP_WEBM = synthetic.video(seconds=3, fps=10, width=160, height=128, kind="webm", seed=14)
CLIP_GIF = synthetic.video(seconds=2, fps=5, width=96, height=96, kind="gif", seed=15)
QUERY_TASK = "Given a web search query, retrieve relevant passages that answer the query"

ROWS = {
    "text": {"text": "The capital of China is Beijing."},
    "query": {"text": "What is the capital of China?", "instruction": QUERY_TASK},
    "image": {"images": [PHOTO]},
    "screenshot": {"images": [SCREEN], "text": "dashboard"},
    "mp4": {"videos": [CLIP_MP4]},
    "webm": {"videos": [CLIP_WEBM], "text": "a moving disc"},
    "gif": {"videos": [CLIP_GIF]},
    "mixed": {
        "videos": [CLIP_GIF],
        "images": [PHOTO, SCREEN],
        "text": "everything",
        "instruction": "Find it",
    },
    "dims64": {"text": "Matryoshka", "dimensions": 64},
    "dims96": {"images": [PHOTO], "dimensions": 96},
}


def assert_close(got: np.ndarray, expected: np.ndarray):
    width = expected.shape[0]
    assert np.abs(got[:width] - expected).max() <= 1e-5
    assert not got[width:].any()  # narrower rows are zero-padded to the request's widest row


@pytest.mark.parametrize("name", list(ROWS))
def test_each_kind_of_row_equals_the_official_pipeline(http_client, official, name):
    [got] = embed(http_client, http, [ROWS[name]])
    [expected] = official.embed([ROWS[name]])
    assert_close(got, expected)


def test_several_rows_with_their_own_instructions_and_dimensions(http_client, official):
    rows = list(ROWS.values())
    got = embed(http_client, http, rows)
    assert got.shape == (len(rows), 128)
    for row, vector in zip(rows, got):
        [expected] = official.embed([row])
        assert_close(vector, expected)


def test_grpc_gives_the_same_vectors(grpc_client, http_client):
    rows = [ROWS["query"], ROWS["mixed"]]
    assert np.array_equal(embed(grpc_client, grpc, rows), embed(http_client, http, rows))


def test_overlong_text_is_truncated_at_8192_tokens_like_the_official_code(http_client, official):
    row = {"text": "word " * 9000}
    [got] = embed(http_client, http, [row])
    [expected] = official.embed([row])
    assert_close(got, expected)


def test_concurrent_requests_are_batched_by_the_embedding_model(http_client):
    before = settled_stats(http_client, "qwen3_vl_embedding_model")
    # Long enough (~1,200 tokens) that the model step is busy while more requests arrive, even on 2 cores.
    texts = [f"sentence number {index} " * (300 + index % 7) for index in range(48)]
    pending = [embed_async(http_client, [{"text": text}]) for text in texts]
    results = [request.get_result().as_numpy("EMBEDDING") for request in pending]
    after = settled_stats(http_client, "qwen3_vl_embedding_model", int(before["inference_count"]) + 48)
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == 48
    assert executions < inferences, (executions, inferences)
    # Batched with others or not, each text gets the vector it gets alone.
    for text, [vector] in zip(texts[:5], results[:5]):
        assert np.abs(embed(http_client, http, [{"text": text}])[0] - vector).max() <= 1e-5


def _long_video() -> bytes:
    # 1,000 s at 1 fps, 32x32: tiny to encode, but over the 900 s limit (rejected from the header).
    return synthetic.video(seconds=1000, fps=1, width=32, height=32, kind="mp4")


def _huge_image() -> bytes:
    # 9000x8000 = 72 M pixels, over the 64 M limit; a flat PNG of it is small.
    from PIL import Image

    return synthetic.encode_image(Image.new("L", (9000, 8000), 128), "PNG")


BAD_ROWS = {
    "no content": ({"text": "", "instruction": "Find it"}, "no content"),
    "corrupt image": ({"images": [b"\x89PNG\r\n\x1a\n" + b"\x00" * 100]}, "not a decodable image"),
    "truncated jpeg": ({"images": [PHOTO[: len(PHOTO) // 3]]}, "IMAGE[0]"),
    "corrupt video": ({"videos": [b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 500]}, "VIDEO[0]"),
    "oversized image": ({"images": [_huge_image()]}, "over the limit"),
    "oversized video": ({"videos": [_long_video()]}, "over the limit of 900 s"),
    "dimensions too small": ({"text": "x", "dimensions": 32}, "DIMENSIONS: must be between 64 and 128"),
    "dimensions too large": ({"text": "x", "dimensions": 4096}, "DIMENSIONS: must be between 64 and 128"),
    "non-utf8 text": ({"text": b"caf\xe9"}, "not valid UTF-8"),
}


@pytest.mark.parametrize("name", list(BAD_ROWS))
def test_a_bad_row_fails_only_its_own_request(http_client, official, name):
    bad_row, message = BAD_ROWS[name]
    good_rows = [ROWS["text"], ROWS["image"], ROWS["query"]]
    expected = [official.embed([row])[0] for row in good_rows]
    bad = embed_async(http_client, [ROWS["text"], bad_row])
    good = [embed_async(http_client, [row]) for row in good_rows for _ in range(2)]
    with pytest.raises(InferenceServerException) as failure:
        bad.get_result()
    for index, request in enumerate(good):
        assert_close(request.get_result().as_numpy("EMBEDDING")[0], expected[index // 2])
    assert failure.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    assert message in failure.value.message()
    assert "row 1" in failure.value.message()
    assert http_client.is_server_live() and http_client.is_model_ready("qwen3_vl_embedding")


def test_bad_requests_do_not_leak_or_kill_the_server(http_client):
    for _ in range(30):
        with pytest.raises(InferenceServerException):
            embed(http_client, http, [{"images": [b"junk"]}])
    assert http_client.is_server_ready()
    [vector] = embed(http_client, http, [ROWS["text"]])
    assert abs(np.linalg.norm(vector) - 1) < 1e-5


def _raw_reference(official, ids: list[int]) -> np.ndarray:
    """vLLM's completion-path vector: the raw ids through Qwen3VLModel, last token, L2-normalised."""
    import torch

    with torch.inference_mode():
        hidden = official.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
    return torch.nn.functional.normalize(hidden.float(), dim=-1).numpy()


def test_raw_mode_equals_transformers_on_raw_tokens_and_counts_tokens(grpc_client, official, tiny_tokenizer):
    texts = ["The capital of China is Beijing.", "Gravity attracts bodies."]
    inputs = []
    for name, array, datatype in (
        ("TEXT", np.array([[t.encode()] for t in texts], dtype=object), "BYTES"),
        ("RAW", np.array([[True], [True]]), "BOOL"),
    ):
        tensor = grpc.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = grpc_client.infer("qwen3_vl_embedding", inputs)
    ids = [tiny_tokenizer(text)["input_ids"] for text in texts]
    for row, row_ids in enumerate(ids):
        np.testing.assert_allclose(
            result.as_numpy("EMBEDDING")[row], _raw_reference(official, row_ids), atol=1e-5
        )
    assert result.as_numpy("TOKEN_COUNT")[:, 0].tolist() == [len(row_ids) for row_ids in ids]

    token_inputs = []
    for name, array, datatype in (
        ("TOKEN_IDS", np.array([ids[1]], dtype=np.int64), "INT64"),
        ("RAW", np.array([[True]]), "BOOL"),
    ):
        tensor = grpc.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        token_inputs.append(tensor)
    by_ids = grpc_client.infer("qwen3_vl_embedding", token_inputs).as_numpy("EMBEDDING")[0]
    np.testing.assert_allclose(by_ids, result.as_numpy("EMBEDDING")[1], atol=1e-6)


def test_token_count_is_what_the_model_ran(http_client, tiny_model_path):
    """TOKEN_COUNT = the preprocess step's ids for the row, image placeholder tokens included."""
    from backend.embedding.preprocess import EmbeddingPreprocessor
    from backend.protocol import EmbeddingItem
    from backend.settings import PreprocessSettings

    preprocessor = EmbeddingPreprocessor(PreprocessSettings(model_path=str(tiny_model_path)))
    rows = [ROWS["text"], ROWS["screenshot"]]
    from tests.integration.conftest import embedding_inputs

    result = http_client.infer("qwen3_vl_embedding", embedding_inputs(http, rows))
    expected = [
        preprocessor.prepare(EmbeddingItem(text=row.get("text"), images=tuple(row.get("images", ())))).length
        for row in rows
    ]
    assert result.as_numpy("TOKEN_COUNT")[:, 0].tolist() == expected
    assert expected[1] > 900  # the 1280x720 screenshot's 880 placeholder tokens are counted
