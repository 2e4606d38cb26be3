"""Compact vectors as the embedding model step returns them: float16, int8, uint8, binary and ubinary
copies of a row's (already cut and normalised) float32 vector, made only for the requests that ask.

The definitions are those of ``qwen3vl_client.bulk.quantize`` (which documents them): the client installs
without the backend and the backend never imports the client, so the arithmetic is restated here and
``tests/unit/test_compact_vectors.py`` asserts both give the same bytes for every type, width and range.

- int8:  ``clip(rint(x * 127 / R), -127, 127)``; uint8: ``clip(rint((x / R + 1) * 127.5), 0, 255)``, with
  ``R = min(1, 4 / sqrt(d))`` for a ``d``-wide vector unless the request names its own range.
- ubinary: 1 where ``x > 0``, eight dimensions a byte, first dimension in the high bit (numpy.packbits);
  binary: the same bytes minus 128, as int8.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from backend.errors import InputError
from backend.protocol import COMPACT_OUTPUTS, EMBEDDING_RANGE_INPUT, EMBEDDING_TYPES_INPUT

TYPES_INPUT, RANGE_INPUT = EMBEDDING_TYPES_INPUT, EMBEDDING_RANGE_INPUT
INT8_SIGMAS = 4.0
DTYPES: dict[str, type[np.generic]] = {
    "float16": np.float16,
    "int8": np.int8,
    "uint8": np.uint8,
    "binary": np.int8,
    "ubinary": np.uint8,
}
# Vector type -> (output tensor, numpy dtype). float32 is EMBEDDING itself, always returned.
OUTPUTS = {name: (COMPACT_OUTPUTS[name], dtype) for name, dtype in DTYPES.items()}
VECTOR_TYPES = ("float32", *OUTPUTS)


def default_range(dimensions: int) -> float:
    return min(1.0, INT8_SIGMAS / math.sqrt(dimensions))


def quantize_row(unit: np.ndarray, vector_type: str, value_range: float = 0.0) -> np.ndarray:
    """One unit vector (float32 [d]) as `vector_type` (0 range = the default for its width)."""
    vector = np.asarray(unit, dtype=np.float32)
    if vector_type == "float16":
        return vector.astype(np.float16)
    if vector_type in ("binary", "ubinary"):
        packed = np.packbits(vector > 0)
        return packed if vector_type == "ubinary" else (packed.astype(np.int16) - 128).astype(np.int8)
    scale = value_range if value_range > 0 else default_range(vector.shape[0])
    if vector_type == "int8":
        return np.clip(np.rint(vector * (127.0 / scale)), -127, 127).astype(np.int8)
    if vector_type == "uint8":
        return np.clip(np.rint((vector / scale + 1.0) * 127.5), 0, 255).astype(np.uint8)
    raise ValueError(f"no compact output for {vector_type!r}")


def parse_types(values: np.ndarray | None) -> tuple[str, ...]:
    """The compact types a request asks for: every type named in any of its rows (empty elements pad
    ragged rows), in VECTOR_TYPES order; float32 needs no extra output."""
    if values is None:
        return ()
    named = set()
    for value in np.asarray(values, dtype=object).reshape(-1):
        if value is None or not len(value):
            continue
        name = bytes(value).decode("utf-8", "replace") if not isinstance(value, str) else value
        if name not in VECTOR_TYPES:
            raise InputError(f"{name!r} is not one of {', '.join(VECTOR_TYPES)}", input=TYPES_INPUT)
        named.add(name)
    return tuple(name for name in OUTPUTS if name in named)


def parse_ranges(values: np.ndarray | None, rows: int) -> list[float]:
    """Each row's int8/uint8 range: 0 (absent) = the documented default for its width."""
    if values is None:
        return [0.0] * rows
    ranges = []
    for row in range(rows):
        flat = np.asarray(values[row], dtype=np.float64).reshape(-1)
        value = float(flat[0]) if flat.size else 0.0
        if not (math.isfinite(value) and value >= 0):
            raise InputError(f"must be a positive number (0 = the default), got {value}", input=RANGE_INPUT)
        ranges.append(value)
    return ranges


def compact_outputs(
    vectors: Sequence[np.ndarray], types: Sequence[str], ranges: Sequence[float]
) -> dict[str, np.ndarray]:
    """Output tensors for the asked types: [B, W] where W is the widest row's packed width; a narrower
    (Matryoshka) row is followed by zeros, so read the first packed width of its own dimensions."""
    outputs = {}
    for vector_type in types:
        name, dtype = OUTPUTS[vector_type]
        rows = [quantize_row(vector, vector_type, scale) for vector, scale in zip(vectors, ranges)]
        out = np.zeros((len(rows), max(row.shape[0] for row in rows)), dtype=dtype)
        for index, row in enumerate(rows):
            out[index, : row.shape[0]] = row
        outputs[name] = out
    return outputs
