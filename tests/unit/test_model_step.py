"""The model step's own guard rails: out-of-memory splitting into UNAVAILABLE, inputs checked as a client may
call the step directly, TOKEN_COUNT beside each output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.embedding.model import EmbeddingModel
from backend.errors import InputError, UnavailableError
from backend.protocol import PreparedItem, VisionPatches
from backend.settings import ModelSettings
from backend.wire import pack_rows
from tests.drivers import run_model_requests


@pytest.fixture(scope="module")
def model(tiny_model_path):
    return EmbeddingModel(ModelSettings(model_path=str(tiny_model_path), device="cpu", dtype="float32"))


def rows(*lengths: int) -> list[PreparedItem]:
    rng = np.random.default_rng(sum(lengths))
    return [PreparedItem(input_ids=rng.integers(0, 150_000, size=n).astype(np.int64)) for n in lengths]


def wire(items: list[PreparedItem]) -> dict[str, np.ndarray]:
    return pack_rows(items, pad_token_id=151643)


def out_of_memory_when(model, monkeypatch, fails) -> list[int]:
    """Make the forward raise torch.OutOfMemoryError when `fails(rows)`; returns the batch sizes tried."""
    real = model.last_hidden
    tried: list[int] = []

    def forward(batch):
        tried.append(len(batch))
        if fails(batch):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(batch)

    monkeypatch.setattr(model, "last_hidden", forward)
    return tried


def test_out_of_memory_splits_the_micro_batch_and_keeps_the_vectors(model, monkeypatch):
    items = rows(30, 31, 32, 33, 34)
    expected = model.embed(items)
    tried = out_of_memory_when(model, monkeypatch, lambda batch: len(batch) > 2)
    splits = model.stats.out_of_memory_splits
    got = model.embed(items)
    for want, have in zip(expected, got):
        np.testing.assert_allclose(have, want, atol=1e-5)
    assert tried == [5, 2, 3, 1, 2]  # halves, and the half that still fails halves again
    assert model.stats.out_of_memory_splits > splits


def test_a_request_that_never_fits_is_unavailable_and_fails_alone(model, monkeypatch):
    out_of_memory_when(model, monkeypatch, lambda batch: any(row.length >= 500 for row in batch))
    requests = [wire(rows(20, 21)), wire(rows(600)), wire(rows(22))]
    results = run_model_requests(model, requests)
    assert isinstance(results[1], UnavailableError) and "out of device memory" in str(results[1])
    for result, count in ((results[0], 2), (results[2], 1)):
        assert not isinstance(result, Exception)
        assert result["EMBEDDING"].shape == (count, model.hidden_size)
    assert results[0]["TOKEN_COUNT"].tolist() == [[20], [21]]


def test_other_errors_are_not_taken_for_out_of_memory(model, monkeypatch):
    monkeypatch.setattr(model, "last_hidden", lambda batch: (_ for _ in ()).throw(RuntimeError("boom")))
    [result] = run_model_requests(model, [wire(rows(5))])
    assert type(result) is RuntimeError


def visual(t, h, w, width=1536):
    return VisionPatches(patches=np.zeros((t * h * w, width), dtype=np.uint8), grid_thw=(t, h, w))


def test_the_model_step_checks_what_a_direct_caller_sends(model):
    image_id = model.image_token_id
    good_image = PreparedItem(
        input_ids=np.array([1, image_id, image_id, 2], dtype=np.int64), images=(visual(1, 2, 4),)
    )
    bad = {
        "token ids must be in 0..": wire([rows(3)[0], PreparedItem(input_ids=np.array([1, 10**7]))]),
        "2 placeholder tokens for 1 tokens": wire(
            [rows(3)[0], PreparedItem(input_ids=good_image.input_ids, images=(visual(1, 2, 2),))]
        ),
        "is not a Qwen3-VL grid": wire(
            [rows(3)[0], PreparedItem(input_ids=good_image.input_ids, images=(visual(1, 1, 8),))]
        ),
        "8193 text tokens, over this model step's max_length 8192": wire(
            [rows(3)[0], PreparedItem(input_ids=np.ones(8193, dtype=np.int64))]
        ),
        "EMBED_DIM: must be between 64 and": {
            **wire(rows(3, 4)),
            "EMBED_DIM": np.array([[0], [5]], np.int32),
        },
    }
    for message, tensors in bad.items():
        with pytest.raises(InputError, match=message) as failure:
            model.unpack(tensors)
        assert failure.value.row == 1
    [result] = run_model_requests(model, [wire([good_image])])
    assert result["TOKEN_COUNT"].tolist() == [[4]]


def test_cancelled_requests_are_answered_without_a_forward(model, monkeypatch, tiny_model_path):
    from backend.embedding.preprocess import EmbeddingPreprocessor
    from backend.errors import CancelledError
    from backend.settings import PreprocessSettings
    from backend.steps import preprocess_requests

    tried = out_of_memory_when(model, monkeypatch, lambda batch: False)
    results = run_model_requests(model, [None, wire(rows(7)), None])
    assert isinstance(results[0], CancelledError) and isinstance(results[2], CancelledError)
    assert results[1]["EMBEDDING"].shape == (1, model.hidden_size)
    assert tried == [1]  # one forward, for the live request only
    preprocessor = EmbeddingPreprocessor(PreprocessSettings(model_path=str(tiny_model_path)))
    [cancelled, done] = preprocess_requests(preprocessor, [None, {"TEXT": np.array([[b"hi"]], dtype=object)}])
    assert isinstance(cancelled, CancelledError) and done["SEQ_LEN"].shape == (1, 1)
