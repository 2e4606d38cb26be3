"""The text-only forward of the language model, eager or under `torch.compile` with one graph for every shape.

Text-only micro-batches need no padding mask. Rows are right-padded and attention is causal, so a real
token never attends to the padding after it: the hidden state at each row's last real token is the same
with or without the mask (the mask changes only what pad positions compute, and those are never read). The
positions are 0..L-1 on all three MRoPE axes, which is what the text model uses when given none.

Eager, the forward is handed an all-ones attention mask. Given no mask at all, transformers 4.57 takes the
positions for a packed batch (`find_packed_sequence_indices`, which never answers "not packed") and builds
a [B, 1, L, L] causal mask with torch.vmap in Python on every forward (8.5 % of the model step's CPU on
text_200, tiny model), and sdpa then runs its masked kernel; with an all-ones mask it skips the mask and sdpa
runs its causal kernel. Both are exactly causal: on the CPU the hidden states are bit for bit the same
(checked on the tiny model, tests/unit/test_compiled.py). Under torch.compile nothing is skipped (tracing
never skips the mask), so the compiled graph is left as it was, without one: nothing in the forward depends
on the data, and torch.compile traces the whole language model as one graph.

Compiled with dynamic shapes, that one graph serves every batch size and length: it is compiled once at
load (`warm`), and requests never wait for a compile. Two things keep the set of shapes the graph sees
to one family: lengths are padded up to a multiple of `length_multiple` (at least 16, so never 1), and a
single row runs as two (torch specialises sizes 0 and 1, so a batch of one would compile a second graph).
The pad positions and the duplicate row are computed and dropped. A compile that happens after `warm`
anyway (a guard torch added for some shape) is logged and counted in `recompiles`.

Vision batches stay eager: the vision tower and the MRoPE index have per-item Python loops.
"""

from __future__ import annotations

import locale
import logging
import threading
import time

import torch

logger = logging.getLogger(__name__)

# Warm-up shapes: the first compiles the graph, the second proves that another shape reuses it.
WARM_SHAPES = ((2, 32), (3, 48))


def _files_read_as_utf8() -> bool:
    return locale.getpreferredencoding(False).lower().replace("-", "") == "utf8"


def ensure_utf8_files() -> None:
    """Triton's Python stub embeds the interpreter without setting the process locale, so files opened
    without an encoding are read as ASCII, and inductor fails reading its own UTF-8 kernel templates.
    Switch the character type (only) to the environment's locale, or C.UTF-8 when that is not UTF-8."""
    if _files_read_as_utf8():
        return
    for name in ("", "C.UTF-8", "en_US.UTF-8"):
        try:
            locale.setlocale(locale.LC_CTYPE, name)
        except locale.Error:
            continue
        if _files_read_as_utf8():
            logger.info(
                "set LC_CTYPE to %s so that torch.compile reads its UTF-8 files", name or "the environment's"
            )
            return
    logger.warning("no UTF-8 locale available; torch.compile may fail to read its templates")


def _graphs_compiled() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class TextForward:
    """`forward(input_ids [B, L], lengths [B])` -> float32 [B, hidden]: each row's hidden state at its last
    real token, rows right-padded with any id."""

    def __init__(
        self,
        language_model: torch.nn.Module,
        pad_token_id: int,
        compile_model: bool = False,
        compile_mode: str = "default",
        length_multiple: int = 16,
    ):
        self.language_model = language_model
        self.pad_token_id = pad_token_id
        self.length_multiple = max(16, length_multiple)
        self.recompiles = 0
        self.warmed = False
        self._function = None
        # The model step may run several forwards at once (backend.runtime.worker); compiled ones take turns:
        # dynamo does not promise thread safety should a call compile, and the graph count is process-wide.
        self._one_at_a_time = threading.Lock()
        if compile_model:
            ensure_utf8_files()
            self._function = torch.compile(self.pooled, dynamic=True, mode=compile_mode)

    @property
    def compiled(self) -> bool:
        return self._function is not None

    def pooled(
        self, input_ids: torch.Tensor, last_index: torch.Tensor, all_ones: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Last-token hidden states (float32) at `last_index`, no padding rules. `all_ones`: an attention mask
        of ones, which lets transformers skip building a causal mask (eager only; see the module's doc)."""
        hidden = self.language_model(
            input_ids=input_ids, attention_mask=all_ones, use_cache=False
        ).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, last_index].float()

    def computed_shape(self, rows: int, length: int) -> tuple[int, int]:
        """The shape a batch of `rows` x `length` runs as (what it costs, padding included)."""
        if not self.compiled:
            return rows, length
        return max(rows, 2), -(-length // self.length_multiple) * self.length_multiple

    @torch.inference_mode()
    def __call__(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        last_index = (lengths - 1).to(input_ids.device)
        if self._function is None:
            return self.pooled(input_ids, last_index, torch.ones_like(input_ids))
        rows, length = input_ids.shape
        shape = self.computed_shape(rows, length)
        # Always hand the graph inference tensors: a normal tensor has other dispatch keys, which torch
        # guards on (it would compile a second graph for them).
        input_ids = torch.nn.functional.pad(
            input_ids, (0, shape[1] - length, 0, shape[0] - rows), value=self.pad_token_id
        )
        last_index = torch.nn.functional.pad(last_index, (0, shape[0] - rows))
        with self._one_at_a_time:
            before = _graphs_compiled()
            pooled = self._function(input_ids, last_index)
            new_graphs = _graphs_compiled() - before
        if new_graphs and self.warmed:
            self.recompiles += new_graphs
            logger.warning(
                "torch.compile compiled %d more graph(s) for a %d x %d batch after warm-up "
                "(%d so far); that request waited for it",
                new_graphs,
                *shape,
                self.recompiles,
            )
        return pooled[:rows]

    def disable_compile(self) -> None:
        self._function = None

    def warm(self, device: torch.device) -> float:
        """Compile now (no-op when eager); seconds spent. Raises what torch.compile raised."""
        if self._function is None:
            return 0.0
        started = time.perf_counter()
        for number, (rows, length) in enumerate(WARM_SHAPES):
            ids = torch.full((rows, length), self.pad_token_id, dtype=torch.long, device=device)
            before = _graphs_compiled()
            self(ids, torch.full((rows,), length, dtype=torch.long))
            graphs = _graphs_compiled() - before
            if number and graphs:
                logger.warning(
                    "a second warm-up shape (%d x %d) compiled %d more graph(s): shapes are not dynamic "
                    "here, so new batch shapes may compile while serving",
                    rows,
                    length,
                    graphs,
                )
        self.warmed = True
        return time.perf_counter() - started
