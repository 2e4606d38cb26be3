"""The torch side of the embedding model step: load Qwen3VLModel, forward micro-batches, pool, normalise.

Embedding = last hidden state at each row's last real token (right padding), L2-normalised; a Matryoshka
size d keeps the first d values and normalises again.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from backend import device as devices
from backend.batching import BatchLimits, plan_micro_batches
from backend.compiled import TextForward, compile_wanted
from backend.errors import ConfigError
from backend.records import PreparedItem
from backend.settings import ModelSettings
from backend.vision import normalize_pixels

logger = logging.getLogger(__name__)


def load_backbone(model_path: str, dtype: torch.dtype, attn_implementation: str, device: torch.device):
    """Qwen3VLModel (vision tower + language model, no LM head) from a Hugging Face checkpoint directory.
    Released checkpoints keep the backbone under `model.` (Qwen3VLForConditionalGeneration / the official
    Qwen3VLForEmbedding); 4.57.3's Qwen3VLModel does not strip that prefix by itself and would silently
    start from random weights, so the mapping is explicit. A bare-model checkpoint loads unchanged."""
    from transformers import Qwen3VLModel

    try:
        model = Qwen3VLModel.from_pretrained(
            model_path, dtype=dtype, attn_implementation=attn_implementation, key_mapping={r"^model\.": ""}
        )
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot load a Qwen3-VL model from {model_path!r}: {error}") from error
    return model.to(device).eval()


class LinearPatchEmbed(torch.nn.Module):
    """Qwen3-VL's patch embedding as the Linear it is: its Conv3d's kernel equals its stride and sees one
    already-flattened patch per row. Used on Ascend, where Conv3d rejects bf16 on some chips and is missing
    on 310P; the weights are the conv's, reshaped, so the result is the same up to summation order."""

    def __init__(self, conv: torch.nn.Conv3d):
        super().__init__()
        self.embed_dim = conv.out_channels
        self.proj = torch.nn.Linear(conv.weight[0].numel(), conv.out_channels, bias=conv.bias is not None)
        with torch.no_grad():
            self.proj.weight.copy_(conv.weight.reshape(conv.out_channels, -1))
            if conv.bias is not None:
                self.proj.bias.copy_(conv.bias)
        self.proj.to(device=conv.weight.device, dtype=conv.weight.dtype)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden_states.reshape(-1, self.proj.in_features).to(self.proj.weight.dtype))


def use_linear_patch_embed(model) -> None:
    visual = model.visual
    visual.patch_embed = LinearPatchEmbed(visual.patch_embed.proj)


def wants_mm_token_type_ids(model) -> bool:
    """transformers 5.x's Qwen3VLModel.forward takes `mm_token_type_ids` (0 text, 1 image, 2 video) and
    refuses vision inputs without it (its M-RoPE index groups runs of equal type); 4.57.x's finds the vision
    tokens from the ids itself and has no such argument. Detected from the signature, not the version."""
    return "mm_token_type_ids" in inspect.signature(type(model).forward).parameters


def mm_token_type_ids(input_ids: torch.Tensor, image_token_id: int, video_token_id: int) -> torch.Tensor:
    """What 5.x's processor returns beside input_ids: 1 at image placeholders, 2 at video ones, else 0."""
    types = torch.zeros_like(input_ids, dtype=torch.int32)
    types[input_ids == image_token_id] = 1
    types[input_ids == video_token_id] = 2
    return types


def text_only(rows: Sequence[PreparedItem]) -> bool:
    """A micro-batch without images or videos: it runs in BackboneRunner.text_forward."""
    return not any(row.vision_patch_count for row in rows)


def last_token_pool(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Hidden state at position length-1 of each row: the last position whose attention mask is 1 under
    right padding (pooling position -1 would pool a pad token)."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, lengths.to(hidden.device) - 1]


def matryoshka(normalized: torch.Tensor, dimensions: int) -> torch.Tensor:
    """First `dimensions` values of an L2-normalised vector, normalised again (0 = keep all)."""
    if dimensions <= 0 or dimensions >= normalized.shape[-1]:
        return normalized
    return torch.nn.functional.normalize(normalized[..., :dimensions], p=2, dim=-1)


@dataclass
class BatchStats:
    """Counters the metrics exporter reads (monotonic totals)."""

    rows: int = 0
    micro_batches: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    forward_seconds: float = 0.0
    compiled_micro_batches: int = 0
    recompiles: int = 0
    last_rows_per_execute: list[int] = field(default_factory=list)


@dataclass
class Collated:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: torch.Tensor
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None


def collate(
    rows: Sequence[PreparedItem], pad_token_id: int, device: torch.device, dtype: torch.dtype
) -> Collated:
    lengths = [row.length for row in rows]
    input_ids = np.full((len(rows), max(lengths)), pad_token_id, dtype=np.int64)
    mask = np.zeros_like(input_ids)
    for index, row in enumerate(rows):
        input_ids[index, : row.length] = row.input_ids
        mask[index, : row.length] = 1
    batch = Collated(
        input_ids=torch.from_numpy(input_ids).to(device),
        attention_mask=torch.from_numpy(mask).to(device),
        lengths=torch.tensor(lengths, dtype=torch.long),
    )
    for attribute, values_name, grid_name in (
        ("images", "pixel_values", "image_grid_thw"),
        ("videos", "pixel_values_videos", "video_grid_thw"),
    ):
        visuals = [visual for row in rows for visual in getattr(row, attribute)]
        if visuals:
            patches = torch.from_numpy(np.concatenate([visual.patches for visual in visuals]))
            setattr(batch, values_name, normalize_pixels(patches.to(device)).to(dtype))
            setattr(
                batch,
                grid_name,
                torch.tensor([visual.grid_thw for visual in visuals], dtype=torch.long, device=device),
            )
    return batch


class BackboneRunner:
    """One Qwen3-VL backbone on one device, run over rows from any number of requests in token-budget
    micro-batches. Subclasses turn each row's last-token hidden state into their output."""

    def __init__(
        self,
        settings: ModelSettings,
        instance_index: int = 0,
        triton_gpu_id: int | None = None,
        instance_count: int = 1,
    ):
        self.settings = settings
        self.device = devices.resolve_device(settings.device, instance_index, triton_gpu_id)
        self.dtype = devices.resolve_dtype(settings.dtype, self.device)
        devices.set_current(self.device)
        if self.device.type == "cpu":
            devices.share_cpu_threads(settings.cpu_threads, instance_count)
        started = time.perf_counter()
        self.model = load_backbone(settings.model_path, self.dtype, settings.attn_implementation, self.device)
        if self.device.type == "npu":
            use_linear_patch_embed(self.model)
        config = self.model.config
        self.mm_token_types = wants_mm_token_type_ids(self.model)
        self.hidden_size = int(config.text_config.hidden_size)
        self.pad_token_id = int(getattr(config.text_config, "pad_token_id", None) or 151643)
        self.limits = BatchLimits(
            settings.token_budget,
            settings.max_rows_per_batch,
            settings.vision_patch_budget,
            settings.batch_overhead_tokens,
        )
        self.text_forward = TextForward(
            self.model.language_model,
            self.pad_token_id,
            compile_wanted(settings.compile, self.device),
            settings.compile_mode,
            settings.compile_length_multiple,
        )
        self.stats = BatchStats()
        logger.info(
            "loaded %s on %s as %s (%s attention, hidden %d) in %.1f s",
            settings.model_path,
            self.device,
            self.dtype,
            settings.attn_implementation,
            self.hidden_size,
            time.perf_counter() - started,
        )

    @torch.inference_mode()
    def last_hidden(self, rows: Sequence[PreparedItem]) -> torch.Tensor:
        """float32 [len(rows), hidden]: each row's hidden state at its last real token, one forward pass."""
        batch = collate(rows, self.pad_token_id, self.device, self.dtype)
        if text_only(rows):
            # Text only: the language model alone, no mask, plain positions (backend.compiled says why
            # that is exact); it skips HF's per-row MRoPE index loop and may run compiled.
            return self.text_forward(batch.input_ids, batch.lengths)
        extra = {}
        if self.mm_token_types:  # transformers 5.x (see wants_mm_token_type_ids)
            config = self.model.config
            extra["mm_token_type_ids"] = mm_token_type_ids(
                batch.input_ids, config.image_token_id, config.video_token_id
            )
        output = self.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            pixel_values=batch.pixel_values,
            image_grid_thw=batch.image_grid_thw,
            pixel_values_videos=batch.pixel_values_videos,
            video_grid_thw=batch.video_grid_thw,
            use_cache=False,
            **extra,
        )
        return last_token_pool(output.last_hidden_state, batch.lengths).float()

    def run(
        self,
        rows: Sequence[PreparedItem],
        head: Callable[[torch.Tensor, Sequence[PreparedItem]], list[np.ndarray]],
    ) -> list[np.ndarray]:
        """`head(hidden, rows)` of every row, in row order, computed micro-batch by micro-batch."""
        lengths = [row.length for row in rows]
        plan = plan_micro_batches(lengths, [row.vision_patch_count for row in rows], self.limits)
        results: list[np.ndarray | None] = [None] * len(rows)
        for indices in plan:
            started = time.perf_counter()
            batch_rows = [rows[index] for index in indices]
            with torch.inference_mode():
                outputs = head(self.last_hidden(batch_rows), batch_rows)
            for index, output in zip(indices, outputs):
                results[index] = output
            self.stats.micro_batches += 1
            self.stats.forward_seconds += time.perf_counter() - started
            count, longest = len(indices), max(lengths[index] for index in indices)
            if text_only(batch_rows):
                count, longest = self.text_forward.computed_shape(count, longest)
                self.stats.compiled_micro_batches += self.text_forward.compiled
            self.stats.padded_tokens += count * longest
        self.stats.recompiles = self.text_forward.recompiles
        self.stats.rows += len(rows)
        self.stats.real_tokens += sum(lengths)
        return results  # type: ignore[return-value]

    def warmup(self) -> None:
        """Compile the text forward (when compiling) and run one short forward, so that the first request
        pays for neither. With `compile: auto` a failed compile falls back to eager, with a warning."""
        if self.text_forward.compiled:
            try:
                seconds = self.text_forward.warm(self.device)
            except Exception as error:  # inductor needs a C++ compiler / Triton kernels; ops may be missing
                if self.settings.compile == "on":
                    raise ConfigError(f"compile=on: torch.compile failed: {error}") from error
                logger.warning("torch.compile failed (%s); running eager", error)
                self.text_forward.disable_compile()
            else:
                logger.info("text forward compiled in %.1f s (dynamic shapes)", seconds)
        ids = np.array([151644, 872, 198, 9707, 151645], dtype=np.int64)
        self.run([PreparedItem(input_ids=ids)], lambda hidden, rows: [hidden.cpu().numpy()])


class EmbeddingModel(BackboneRunner):
    """Qwen3-VL-Embedding: normalised last-token states, cut per row to its Matryoshka size."""

    @staticmethod
    def _vectors(hidden: torch.Tensor, rows: Sequence[PreparedItem]) -> list[np.ndarray]:
        normalized = torch.nn.functional.normalize(hidden, p=2, dim=-1)
        if all(row.dimensions <= 0 or row.dimensions >= normalized.shape[-1] for row in rows):
            return list(normalized.cpu().numpy())  # one device-to-host copy for the whole micro-batch
        return [matryoshka(vector, row.dimensions).cpu().numpy() for vector, row in zip(normalized, rows)]

    def embed(self, rows: Sequence[PreparedItem]) -> list[np.ndarray]:
        """One float32 vector per row (row order kept), each cut to its own Matryoshka size."""
        return self.run(rows, self._vectors)
