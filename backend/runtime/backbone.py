"""The torch side of both model steps: load Qwen3VLModel, forward micro-batches, pool each row's last real
token. What a model makes of that hidden state is its own (backend.embedding.model, backend.reranking.model).
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from backend.errors import ConfigError, InputError, UnavailableError
from backend.protocol import MERGE_SIZE, MODEL_INPUTS, PATCH_WIDTH, PreparedItem, Tensors, VisionPatches
from backend.runtime.batching import BatchLimits, plan_micro_batches
from backend.runtime.compiled import TextForward
from backend.runtime.platforms import resolve_platform
from backend.settings import ModelSettings
from backend.wire import unpack_rows

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


def normalize_pixels(patches_uint8: torch.Tensor) -> torch.Tensor:
    """The processor's rescale + normalise with mean = std = 0.5, on whatever device the tensor is."""
    return (patches_uint8.float() * (1.0 / 255.0) - 0.5) / 0.5


@functools.cache
def _pixel_table() -> np.ndarray:
    """normalize_pixels of every uint8 value, computed by normalize_pixels itself (float32 [256])."""
    return normalize_pixels(torch.arange(256, dtype=torch.uint8)).numpy()


def pixel_values(patches_uint8: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The normalised pixels of uint8 patches on `device` in `dtype`. On the CPU by one lookup in a 256-entry
    table of normalize_pixels' own results: the same float32 values bit for bit (each element goes through
    the same correctly rounded operations), in one pass over the patches where the arithmetic takes four and
    three temporaries (a third of the CPU; collate was 8.6 % of the model step's CPU on image_448). On an
    accelerator the uint8 patches travel (a quarter of the bytes) and are normalised there."""
    if device.type == "cpu":
        return torch.from_numpy(_pixel_table()[patches_uint8]).to(dtype)
    return normalize_pixels(torch.from_numpy(patches_uint8).to(device)).to(dtype)


def last_token_pool(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Hidden state at position length-1 of each row: the last position whose attention mask is 1 under
    right padding (pooling position -1 would pool a pad token)."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, lengths.to(hidden.device) - 1]


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
    out_of_memory_splits: int = 0
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
            patches = np.concatenate([visual.patches for visual in visuals])
            setattr(batch, values_name, pixel_values(patches, device, dtype))
            setattr(
                batch,
                grid_name,
                torch.tensor([visual.grid_thw for visual in visuals], dtype=torch.long, device=device),
            )
    return batch


def check_vision(ids: np.ndarray, token_id: int, visuals: Sequence[VisionPatches], name: str) -> None:
    """Each grid is a Qwen3-VL grid and the row has one placeholder token per merged patch."""
    for visual in visuals:
        t, h, w = visual.grid_thw
        if min(t, h, w) <= 0 or h % MERGE_SIZE or w % MERGE_SIZE or visual.patches.shape[-1] != PATCH_WIDTH:
            raise InputError(
                f"grid {visual.grid_thw} of {visual.patches.shape[-1]}-value patches is not a Qwen3-VL grid "
                f"(positive, h and w even, {PATCH_WIDTH} values per patch)",
                input=f"{name}_GRID_THW",
            )
    placeholders = int((ids == token_id).sum())
    expected = sum(visual.token_count for visual in visuals)
    if placeholders != expected:
        raise InputError(
            f"{placeholders} placeholder tokens for {expected} tokens of patches", input=f"{name}_PATCHES"
        )


class BackboneRunner(ABC):
    """One Qwen3-VL backbone on one device, run over rows from any number of requests in token-budget
    micro-batches. Subclasses turn each row's last-token hidden state into their output (row_outputs) and
    a request's outputs into its tensors (respond): with unpack and compute below, a ModelHead
    (backend.runtime.head), which the model step's queue runs."""

    # The request tensors the stub reads: the wire from the preprocess step, plus a subclass's own.
    input_names: tuple[str, ...] = MODEL_INPUTS

    def __init__(
        self,
        settings: ModelSettings,
        instance_index: int = 0,
        triton_gpu_id: int | None = None,
        instance_count: int = 1,
    ):
        self.settings = settings
        self.platform = resolve_platform(settings.device, instance_index, triton_gpu_id)
        self.device = self.platform.device
        self.dtype = self.platform.resolve_dtype(settings.dtype)
        # Forwards the model step runs at once (backend.runtime.worker): on the CPU, one per lane of threads.
        self.lanes = self.platform.activate(settings.cpu_threads, instance_count, settings.cpu_lanes)
        started = time.perf_counter()
        self.model = load_backbone(settings.model_path, self.dtype, settings.attn_implementation, self.device)
        self.platform.prepare_model(self.model)
        config = self.model.config
        self.mm_token_types = wants_mm_token_type_ids(self.model)
        self.hidden_size = int(config.text_config.hidden_size)
        self.vocab_size = int(config.text_config.vocab_size)
        self.image_token_id = int(config.image_token_id)
        self.video_token_id = int(config.video_token_id)
        self.vision_token_ids = np.array([self.image_token_id, self.video_token_id])
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
            self.platform.compile_wanted(settings.compile),
            settings.compile_mode,
            settings.compile_length_multiple,
        )
        self.stats = BatchStats()
        # Several threads may run micro-batches at once (backend.runtime.worker: execute() and its lanes'
        # helpers, the worker threads).
        self.stats_lock = threading.Lock()
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
            # Text only: the language model alone, no mask, plain positions (backend.runtime.compiled says why
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

    @abstractmethod
    def row_outputs(self, hidden: torch.Tensor, rows: Sequence[PreparedItem]) -> list[np.ndarray]:
        """What the model makes of each row's last-token hidden state (float32 [len(rows), hidden]): one
        array per row, in row order."""

    @abstractmethod
    def respond(self, rows: Sequence[PreparedItem], outputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """A request's output tensors from its rows and their row_outputs (backend.runtime.head)."""

    @property
    def queue_timeout_seconds(self) -> float:
        return self.settings.queue_timeout_seconds

    def run(self, rows: Sequence[PreparedItem]) -> list[np.ndarray]:
        """row_outputs of every row, in row order, computed micro-batch by micro-batch."""
        plan = plan_micro_batches(
            [row.length for row in rows], [row.vision_patch_count for row in rows], self.limits
        )
        results: list[np.ndarray | None] = [None] * len(rows)
        for indices in plan:
            for index, output in zip(indices, self.compute([rows[index] for index in indices])):
                results[index] = output
        return results  # type: ignore[return-value]

    def compute(self, rows: Sequence[PreparedItem]) -> list[np.ndarray]:
        """row_outputs of rows already planned as one micro-batch (plan_micro_batches), in row order: the
        unit the model step's queue (backend.runtime.scheduler) runs."""
        results: list[np.ndarray | None] = [None] * len(rows)
        for part, outputs in self._run_micro_batch(rows, list(range(len(rows)))):
            for index, output in zip(part, outputs):
                results[index] = output
        with self.stats_lock:
            self.stats.recompiles = self.text_forward.recompiles
            self.stats.rows += len(rows)
            self.stats.real_tokens += sum(row.length for row in rows)
        return results  # type: ignore[return-value]

    def _run_micro_batch(
        self, rows: Sequence[PreparedItem], indices: list[int]
    ) -> list[tuple[list[int], list[np.ndarray]]]:
        """(indices, outputs) for one planned micro-batch. A device out-of-memory splits it in halves and
        tries again; a single row that still does not fit is UnavailableError (503, retried by clients)
        rather than INTERNAL, and the server keeps going."""
        started = time.perf_counter()
        batch_rows = [rows[index] for index in indices]
        try:
            with torch.inference_mode():
                outputs = self.row_outputs(self.last_hidden(batch_rows), batch_rows)
        except Exception as error:
            if not self.platform.is_out_of_memory(error):
                raise
            self.platform.empty_cache()
            with self.stats_lock:
                self.stats.out_of_memory_splits += 1
            if len(indices) == 1:
                raise UnavailableError(
                    f"out of device memory for one row of {batch_rows[0].length} tokens; try again later "
                    "or send a smaller item"
                ) from None
            middle = len(indices) // 2
            logger.warning(
                "out of device memory in a micro-batch of %d rows; running it as %d + %d",
                len(indices),
                middle,
                len(indices) - middle,
            )
            return self._run_micro_batch(rows, indices[:middle]) + self._run_micro_batch(
                rows, indices[middle:]
            )
        count, longest = len(indices), max(row.length for row in batch_rows)
        if text_only(batch_rows):
            count, longest = self.text_forward.computed_shape(count, longest)
        with self.stats_lock:
            self.stats.micro_batches += 1
            self.stats.forward_seconds += time.perf_counter() - started
            if text_only(batch_rows):
                self.stats.compiled_micro_batches += self.text_forward.compiled
            self.stats.padded_tokens += count * longest
        return [(indices, outputs)]

    def unpack(self, inputs: Tensors) -> list[PreparedItem]:
        """The wire tensors as rows the model can run. The preprocess step always sends such rows; a client
        calling the model step directly may not, and gets INVALID_ARG naming the row instead of an INTERNAL
        from deep in torch."""
        rows = unpack_rows(inputs)
        for index, row in enumerate(rows):
            try:
                self.check_row(row)
            except InputError as error:
                raise error.at_row(index) from None
        return rows

    def check_row(self, row: PreparedItem) -> None:
        """Ids inside the vocabulary, at most max_length text tokens, vision placeholders matching the
        patches sent for them. Subclasses add their own per-row checks."""
        ids = row.input_ids
        text_tokens = row.length - int(np.isin(ids, self.vision_token_ids).sum())
        if text_tokens > self.settings.max_length:
            # Vision placeholders are bounded by the patches sent for them (checked below); the reranker's
            # truncation keeps them all, as the official code does.
            raise InputError(
                f"{text_tokens} text tokens, over this model step's max_length {self.settings.max_length}",
                input="INPUT_IDS",
            )
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise InputError(f"token ids must be in 0..{self.vocab_size - 1}", input="INPUT_IDS")
        check_vision(ids, self.image_token_id, row.images, "IMAGE")
        check_vision(ids, self.video_token_id, row.videos, "VIDEO")

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
        self.run([PreparedItem(input_ids=ids)])
