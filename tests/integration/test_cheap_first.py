"""Short requests beside heavy ones in the model step (issue #10): the step answers each request through its
response sender as soon as its own rows are done, and each answer is still that request's own."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

from backend.protocol import PreparedItem
from backend.wire import pack_rows
from tests.integration.conftest import embed, embed_async
from tools import synthetic

MODEL_STEP = "qwen3_vl_embedding_model"


def step_inputs(rows: list[PreparedItem]):
    inputs = []
    for name, array in pack_rows(rows, pad_token_id=151643).items():
        tensor = http.InferInput(name, list(array.shape), "INT32" if array.dtype == np.int32 else "INT64")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def text_row(length: int, seed: int) -> PreparedItem:
    ids = np.random.default_rng(seed).integers(0, 150_000, size=length).astype(np.int64)
    return PreparedItem(input_ids=ids)


def test_a_short_text_sent_beside_videos_gets_its_own_vector(http_client):
    video = synthetic.video(seconds=4, fps=8, width=320, height=240, seed=5)
    text = {"text": "a short text to embed"}
    [text_alone] = embed(http_client, http, [text])
    [video_alone] = embed(http_client, http, [{"videos": [video]}])
    videos = [embed_async(http_client, [{"videos": [video]}]) for _ in range(3)]
    texts = [embed_async(http_client, [text]) for _ in range(3)]
    for pending in texts:
        assert np.abs(pending.get_result().as_numpy("EMBEDDING")[0] - text_alone).max() <= 1e-5
    for pending in videos:
        assert np.abs(pending.get_result().as_numpy("EMBEDDING")[0] - video_alone).max() <= 1e-5


def test_heavy_short_and_invalid_requests_in_one_burst_each_get_their_own_answer(http_client):
    heavy, short = [text_row(3000, 1), text_row(2500, 2)], [text_row(9, 3)]
    bad = [text_row(9, 4), PreparedItem(input_ids=np.array([1, 10**7], dtype=np.int64))]
    heavy_alone = http_client.infer(MODEL_STEP, step_inputs(heavy)).as_numpy("EMBEDDING")
    short_alone = http_client.infer(MODEL_STEP, step_inputs(short)).as_numpy("EMBEDDING")
    burst = [http_client.async_infer(MODEL_STEP, step_inputs(rows)) for rows in (heavy, bad, short, heavy)]
    results = [pending.get_result() for pending in (burst[0], burst[2], burst[3])]
    for result, alone in zip(results, (heavy_alone, short_alone, heavy_alone)):
        assert np.abs(result.as_numpy("EMBEDDING") - alone).max() <= 1e-5
    assert results[0].as_numpy("TOKEN_COUNT").tolist() == [[3000], [2500]]
    with pytest.raises(InferenceServerException, match="row 1: INPUT_IDS: token ids must be in") as failure:
        burst[1].get_result()
    assert "400" in str(failure.value.status())
