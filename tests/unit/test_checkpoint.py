"""The tiny Qwen3-VL checkpoint builder: loadable, deterministic, presets consistent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from backend.runtime import backbone as modeling
from tools import checkpoint as tiny_model

# transformers 4.57's Qwen3VLModel has base_model_prefix "", so it cannot strip the "model." prefix that
# real Qwen3-VL(-Embedding) checkpoints and this one use; 5.x strips it by itself.
BACKBONE_KEY_MAPPING = {r"^model\.": ""}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_model.build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "qwen3-vl-embedding-tiny")


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoint)


def test_checkpoint_layout(checkpoint):
    from safetensors import safe_open

    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "special_tokens_map.json",
        "chat_template.jinja",
        "preprocessor_config.json",
        "video_preprocessor_config.json",
    ):
        assert (checkpoint / name).is_file(), name
    assert tiny_model.is_complete_checkpoint(checkpoint)
    with safe_open(checkpoint / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    # Same key layout as the released Qwen3-VL checkpoints; tied lm_head is not stored.
    assert all(k.startswith(("model.language_model.", "model.visual.")) for k in keys)
    assert "lm_head.weight" not in keys


def test_backbone_loads_and_runs(checkpoint, tokenizer):
    from transformers import Qwen3VLModel

    model, info = Qwen3VLModel.from_pretrained(
        checkpoint, key_mapping=BACKBONE_KEY_MAPPING, output_loading_info=True
    )
    # 4.57 reports lists, 5.x sets
    assert not any(list(info[key]) for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    batch = tokenizer(["a short text", "hi"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model.eval()(**batch).last_hidden_state
    assert hidden.shape == (2, batch["input_ids"].shape[1], tiny_model.PRESETS["tiny"].hidden_size)
    assert torch.isfinite(hidden).all()


def test_generation_model_loads_with_tied_head(checkpoint):
    from transformers import Qwen3VLForConditionalGeneration

    model, info = Qwen3VLForConditionalGeneration.from_pretrained(checkpoint, output_loading_info=True)
    assert list(info["missing_keys"]) == [] and list(info["unexpected_keys"]) == []
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    assert model.config.image_token_id == 151655 and model.config.video_token_id == 151656


def test_image_forward(checkpoint, tokenizer):
    import numpy as np
    from PIL import Image
    from transformers import Qwen2VLImageProcessor, Qwen3VLModel

    processor = Qwen2VLImageProcessor.from_pretrained(checkpoint)
    assert (processor.patch_size, processor.temporal_patch_size, processor.merge_size) == (16, 2, 2)
    # lists on 4.57, tuples on 5.x
    assert list(processor.image_mean) == [0.5, 0.5, 0.5] and list(processor.image_std) == [0.5, 0.5, 0.5]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8))
    pixels = processor(images=[image], do_resize=False, return_tensors="pt")
    n_tokens = int(pixels["image_grid_thw"].prod()) // 4
    prompt = "<|vision_start|>" + "<|image_pad|>" * n_tokens + "<|vision_end|>a cat"
    batch = tokenizer([prompt], return_tensors="pt")
    model = Qwen3VLModel.from_pretrained(checkpoint, key_mapping=BACKBONE_KEY_MAPPING).eval()
    if modeling.wants_mm_token_type_ids(model):  # transformers 5.x
        batch["mm_token_type_ids"] = modeling.mm_token_type_ids(
            batch["input_ids"], model.config.image_token_id, model.config.video_token_id
        )
    with torch.inference_mode():
        hidden = model(**batch, **pixels).last_hidden_state
    assert torch.isfinite(hidden).all()


def test_deterministic_and_kinds_differ(checkpoint, tmp_path):
    again = tiny_model.build_tiny_checkpoint(tmp_path / "again")
    for path in sorted(checkpoint.iterdir()):
        assert tiny_model.file_sha256(path) == tiny_model.file_sha256(again / path.name), path.name
    _, reranker = tiny_model.build_model(kind="reranker")
    _, embedding = tiny_model.build_model(kind="embedding")
    embed = embedding.model.language_model.embed_tokens.weight
    assert not torch.equal(embed, reranker.model.language_model.embed_tokens.weight)


def test_cli_is_a_no_op_on_a_complete_checkpoint(checkpoint, capsys):
    before = (checkpoint / "model.safetensors").stat().st_mtime_ns
    assert tiny_model.main(["--out", str(checkpoint)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (checkpoint / "model.safetensors").stat().st_mtime_ns == before


def test_presets_are_consistent():
    from transformers import Qwen3VLConfig

    for size in tiny_model.PRESETS:
        config = tiny_model.make_config(size)
        assert isinstance(config, Qwen3VLConfig)
        assert config.vision_config.out_hidden_size == config.text_config.hidden_size
    assert (
        tiny_model.make_config("2b").tie_word_embeddings
        and not tiny_model.make_config("8b").tie_word_embeddings
    )
