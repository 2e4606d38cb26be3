"""The compiled text forward (backend.runtime.compiled) on CPU: eager's vectors, one graph for every shape."""

import dataclasses
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from backend.embedding.model import EmbeddingModel
from backend.embedding.preprocess import EmbeddingPreprocessor
from backend.errors import ConfigError
from backend.protocol import EmbeddingItem, PairSide, PreparedItem, RerankPair
from backend.reranking.model import RerankModel
from backend.reranking.preprocess import RerankPreprocessor
from backend.runtime.compiled import TextForward
from backend.runtime.platforms import CudaPlatform, NpuPlatform, Platform
from backend.settings import (
    ModelSettings,
    PreprocessSettings,
    RerankModelSettings,
    RerankPreprocessSettings,
)
from tools import synthetic


def settings(path, compile_choice: str) -> ModelSettings:
    return ModelSettings(model_path=str(path), device="cpu", dtype="float32", compile=compile_choice)


@pytest.fixture(scope="module")
def eager(tiny_model_path):
    return EmbeddingModel(settings(tiny_model_path, "off"))


@pytest.fixture(scope="module")
def compiled(tiny_model_path):
    model = EmbeddingModel(settings(tiny_model_path, "on"))
    model.warmup()  # compiles, as the model step does at load
    return model


def text_rows(lengths, seed=0, dimensions=0):
    rng = np.random.default_rng(seed)
    return [
        PreparedItem(input_ids=rng.integers(0, 150_000, size=length).astype(np.int64), dimensions=dimensions)
        for length in lengths
    ]


def test_compile_choice_per_device():
    npu = NpuPlatform(SimpleNamespace(type="npu"))  # torch without torch_npu cannot make an npu device
    cuda, cpu = CudaPlatform(torch.device("cuda")), Platform(torch.device("cpu"))
    assert cuda.compile_wanted("auto") is True
    assert cpu.compile_wanted("auto") is False
    assert cpu.compile_wanted("on") is True
    assert cuda.compile_wanted("off") is False
    assert npu.compile_wanted("auto") is False
    assert npu.compile_wanted("off") is False
    with pytest.raises(ConfigError, match="not supported on npu"):
        npu.compile_wanted("on")


def test_settings_reject_unknown_compile_values(tiny_model_path):
    from backend.settings import load_settings

    with pytest.raises(ConfigError, match="compile must be"):
        load_settings(ModelSettings, {"compile": "yes"})
    with pytest.raises(ConfigError, match="compile_mode"):
        load_settings(ModelSettings, {"compile_mode": "fast"})
    assert load_settings(ModelSettings, {}, {"compile": "COMPILE"}, {"COMPILE": "on"}).compile == "on"


@pytest.mark.parametrize(
    "lengths",
    [[1], [5], [17, 3, 40], [64] * 9, [230, 7, 120, 33, 199], [700, 650]],
    ids=["one-token", "one-row", "three", "nine-equal", "five-mixed", "long"],
)
def test_compiled_vectors_equal_eager_for_every_shape(eager, compiled, lengths):
    rows = text_rows(lengths, seed=len(lengths))
    expected = eager.embed(rows)
    got = compiled.embed(rows)
    for want, have in zip(expected, got):
        assert have.shape == want.shape
        assert np.abs(have - want).max() <= 1e-5
    # Every shape reused the graph compiled at load.
    assert compiled.text_forward.recompiles == 0
    assert compiled.stats.recompiles == 0


@pytest.mark.parametrize("lengths", [(17,), (213, 150, 99, 213), (64,) * 7])
def test_the_eager_all_ones_mask_changes_no_bit(eager, lengths):
    """The eager text forward's all-ones mask (transformers then skips its vmap-built causal mask) gives
    the hidden states of the forward without a mask, bit for bit, at every row's last real token."""
    rows = text_rows(lengths, seed=len(lengths))
    forward = eager.text_forward
    width = max(lengths)
    ids = torch.tensor(
        np.stack([np.pad(row.input_ids, (0, width - row.length), constant_values=0) for row in rows])
    )
    last = torch.tensor([row.length - 1 for row in rows])
    with torch.inference_mode():
        unmasked = forward.language_model(input_ids=ids, use_cache=False).last_hidden_state
        expected = unmasked[torch.arange(len(rows)), last].float()
        assert torch.equal(forward(ids, last + 1), expected)


def test_no_shape_compiles_a_new_graph_after_warm_up(compiled):
    from torch._dynamo.utils import counters

    before = counters["stats"]["unique_graphs"]
    for seed, lengths in enumerate(([3], [2, 9], [31] * 4, [16, 48, 80, 112, 144, 176], [333])):
        compiled.embed(text_rows(lengths, seed=seed))
    assert counters["stats"]["unique_graphs"] == before
    assert compiled.text_forward.recompiles == 0


def test_matryoshka_and_stats_on_the_compiled_path(compiled, eager):
    rows = text_rows([10, 20, 30], seed=7, dimensions=64)
    batches_before = compiled.stats.compiled_micro_batches
    padded_before = compiled.stats.padded_tokens
    vectors = compiled.embed(rows)
    assert [vector.shape for vector in vectors] == [(64,)] * 3
    assert np.allclose([np.linalg.norm(vector) for vector in vectors], 1.0, atol=1e-5)
    assert np.abs(np.stack(vectors) - np.stack(eager.embed(rows))).max() <= 1e-5
    assert compiled.stats.compiled_micro_batches > batches_before
    # Padded tokens count what ran: lengths rounded up to a multiple of 16.
    assert (compiled.stats.padded_tokens - padded_before) % 16 == 0
    assert compiled.stats.padded_tokens - padded_before >= 3 * 32


def test_a_single_row_runs_as_two_and_lengths_round_up():
    forward = TextForward(torch.nn.Identity(), pad_token_id=0, compile_model=True, length_multiple=8)
    assert forward.computed_shape(1, 5) == (2, 16)  # the multiple is at least 16
    assert forward.computed_shape(7, 33) == (7, 48)
    assert TextForward(torch.nn.Identity(), 0).computed_shape(1, 5) == (1, 5)


def test_batches_with_images_run_eager_and_equal(compiled, eager, tiny_model_path):
    preprocessor = EmbeddingPreprocessor(PreprocessSettings(model_path=str(tiny_model_path)))
    photo = synthetic.encode_image(synthetic.photo(224, 160, seed=3))
    rows = [
        preprocessor.prepare(EmbeddingItem(text="a caption", images=(photo,))),
        preprocessor.prepare(EmbeddingItem(text="just text")),
    ]
    for want, have in zip(eager.embed(rows), compiled.embed(rows)):
        assert np.abs(have - want).max() <= 1e-5


def test_the_reranker_scores_the_same_compiled(tiny_reranker_path):
    preprocessor = RerankPreprocessor(RerankPreprocessSettings(model_path=str(tiny_reranker_path)))
    documents = ["short", "a somewhat longer document about dogs on beaches " * 3, "x " * 90]
    pairs = [
        preprocessor.prepare(RerankPair(PairSide("a dog on the beach"), PairSide(document), None))
        for document in documents
    ]
    scores = {}
    for choice in ("off", "on"):
        model = RerankModel(
            RerankModelSettings(
                model_path=str(tiny_reranker_path), device="cpu", dtype="float32", compile=choice
            )
        )
        model.warmup()
        scores[choice] = np.concatenate(model.score(pairs))
        assert model.text_forward.recompiles == 0
    assert np.abs(scores["on"] - scores["off"]).max() <= 1e-5


def test_a_failed_compile_falls_back_to_eager_under_auto(tiny_model_path, monkeypatch, caplog):
    def broken(self, device):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(TextForward, "warm", broken)
    model = EmbeddingModel(settings(tiny_model_path, "on"))
    with pytest.raises(ConfigError, match="compile=on: torch.compile failed: no C\\+\\+ compiler"):
        model.warmup()

    # `auto` (on CUDA) degrades instead: same object, told it was asked for with auto.
    model.settings = dataclasses.replace(model.settings, compile="auto")
    with caplog.at_level(logging.WARNING):
        model.warmup()
    assert not model.text_forward.compiled
    assert "running eager" in caplog.text
    assert len(model.embed(text_rows([4, 9]))) == 2
