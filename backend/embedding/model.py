"""The embedding model step: last-token states of the backbone, L2-normalised, cut to a Matryoshka size.

Embedding = last hidden state at each row's last real token (right padding), L2-normalised; a Matryoshka
size d keeps the first d values and normalises again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from backend.protocol import (
    COMPACT_INPUTS,
    EMBEDDING_OUTPUT,
    MODEL_INPUTS,
    TOKEN_COUNT_OUTPUT,
    PreparedItem,
    Tensors,
    check_dimensions,
    token_counts,
)
from backend.runtime.backbone import BackboneRunner
from backend.vectors import RANGE_INPUT, TYPES_INPUT, compact_outputs, parse_ranges, parse_types


def matryoshka(normalized: torch.Tensor, dimensions: int) -> torch.Tensor:
    """First `dimensions` values of an L2-normalised vector, normalised again (0 = keep all)."""
    if dimensions <= 0 or dimensions >= normalized.shape[-1]:
        return normalized
    return torch.nn.functional.normalize(normalized[..., :dimensions], p=2, dim=-1)


class EmbeddingModel(BackboneRunner):
    """Qwen3-VL-Embedding: normalised last-token states, cut per row to its Matryoshka size."""

    input_names = (*MODEL_INPUTS, *COMPACT_INPUTS)

    def row_outputs(self, hidden: torch.Tensor, rows: Sequence[PreparedItem]) -> list[np.ndarray]:
        normalized = torch.nn.functional.normalize(hidden, p=2, dim=-1)
        if all(row.dimensions <= 0 or row.dimensions >= normalized.shape[-1] for row in rows):
            return list(normalized.cpu().numpy())  # one device-to-host copy for the whole micro-batch
        return [matryoshka(vector, row.dimensions).cpu().numpy() for vector, row in zip(normalized, rows)]

    def embed(self, rows: Sequence[PreparedItem]) -> list[np.ndarray]:
        """One float32 vector per row (row order kept), each cut to its own Matryoshka size."""
        return self.run(rows)

    def respond(self, rows: Sequence[PreparedItem], outputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        return embedding_output(rows, outputs)

    def unpack(self, inputs: Tensors) -> list[PreparedItem]:
        rows = super().unpack(inputs)
        types = parse_types(inputs.get(TYPES_INPUT))
        ranges = parse_ranges(inputs.get(RANGE_INPUT), len(rows))
        if not types and not any(ranges):
            return rows
        return [
            dataclasses.replace(row, vector_types=types, vector_range=value_range)
            for row, value_range in zip(rows, ranges)
        ]

    def check_row(self, row: PreparedItem) -> None:
        super().check_row(row)
        check_dimensions(row.dimensions, self.hidden_size, "EMBED_DIM")


def embedding_output(rows: Sequence[PreparedItem], vectors: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """EMBEDDING [B, D] float32 where D is the widest row; narrower (Matryoshka) rows are zero-padded, which
    keeps their norm at 1 and their dot products unchanged. TOKEN_COUNT [B, 1] beside it, and the compact
    copies the request asked for (backend.vectors), made from the same cut, normalised vectors."""
    width = max(vector.shape[0] for vector in vectors)
    out = np.zeros((len(vectors), width), dtype=np.float32)
    for index, vector in enumerate(vectors):
        out[index, : vector.shape[0]] = vector
    outputs = {EMBEDDING_OUTPUT: out, TOKEN_COUNT_OUTPUT: token_counts(rows)}
    if rows and rows[0].vector_types:
        outputs.update(compact_outputs(vectors, rows[0].vector_types, [row.vector_range for row in rows]))
    return outputs
