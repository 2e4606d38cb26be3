"""Compact vectors: cut to ``dimensions``, normalise, then store as float32, float16, int8, uint8, binary or
ubinary. Pure functions over numpy arrays; the same inputs always give the same bytes.

The integer types share one fixed, documented scale so that vectors quantised on different days, machines or
shards compare with each other: a symmetric range ``[-R, R]`` mapped onto the integers, with

    R = min(1, INT8_SIGMAS / sqrt(d))

for ``d`` dimensions (components of a unit vector have a standard deviation near ``1/sqrt(d)``, so the
default keeps four of them and clips the rare larger component). ``calibrate_range`` measures ``R`` from
sample vectors instead; whatever ``R`` a job uses is written into its manifest.

- int8:  ``q = clip(round(x * 127 / R), -127, 127)``; back: ``x ~ q * R / 127``.
- uint8: ``q = clip(round((x / R + 1) * 127.5), 0, 255)``; back: ``x ~ (q / 127.5 - 1) * R``.
- ubinary: one bit per dimension, 1 where ``x > 0``, packed 8 to a byte, first dimension in the high bit
  (``numpy.packbits``), ``ceil(d / 8)`` bytes; binary: the same bytes minus 128 as int8 (the convention of
  Cohere's and vLLM's ``binary``/``ubinary``).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import numpy as np

VectorType = Literal["float32", "float16", "int8", "uint8", "binary", "ubinary"]
VECTOR_TYPES: tuple[str, ...] = get_args(VectorType)
INT8_SIGMAS = 4.0
# numpy dtype each vector type is stored as.
STORAGE_DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "int8": np.int8,
    "uint8": np.uint8,
    "binary": np.int8,
    "ubinary": np.uint8,
}


def check_vector_type(vector_type: str) -> VectorType:
    if vector_type not in VECTOR_TYPES:
        raise ValueError(f"vector type must be one of {', '.join(VECTOR_TYPES)}, got {vector_type!r}")
    return vector_type  # type: ignore[return-value]  # checked just above


def cut_normalise(vectors: np.ndarray, dimensions: int | None = None) -> np.ndarray:
    """The first ``dimensions`` components (all when None or 0) of each row, L2-normalised, as float32.
    A zero row stays zero."""
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"vectors must be a 2-D array, got shape {matrix.shape}")
    if dimensions:
        if dimensions > matrix.shape[1]:
            raise ValueError(f"cannot cut {matrix.shape[1]}-dimensional vectors to {dimensions}")
        matrix = matrix[:, :dimensions]
    norms = np.linalg.norm(matrix.astype(np.float64), axis=1, keepdims=True)
    return (matrix / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def default_range(dimensions: int) -> float:
    """The documented int8/uint8 range for ``dimensions``-wide unit vectors."""
    if dimensions < 1:
        raise ValueError(f"dimensions must be positive, got {dimensions}")
    return min(1.0, INT8_SIGMAS / math.sqrt(dimensions))


def calibrate_range(vectors: np.ndarray, quantile: float = 0.9999) -> float:
    """A range measured from sample unit vectors: the ``quantile`` of their absolute components."""
    values = np.abs(np.asarray(vectors, dtype=np.float32)).ravel()
    if not values.size:
        raise ValueError("no vectors to calibrate on")
    measured = float(np.quantile(values, quantile))
    return measured if measured > 0 else 1.0


def packed_width(vector_type: str, dimensions: int) -> int:
    """How many stored values one ``dimensions``-wide vector takes."""
    return math.ceil(dimensions / 8) if vector_type in ("binary", "ubinary") else dimensions


def quantize(unit: np.ndarray, vector_type: str, value_range: float | None = None) -> np.ndarray:
    """Unit vectors (rows; from ``cut_normalise``) in ``vector_type``. ``value_range`` is the int8/uint8
    range R (default: ``default_range`` of the width)."""
    kind = check_vector_type(vector_type)
    matrix = np.asarray(unit, dtype=np.float32)
    if kind == "float32":
        return matrix.copy()
    if kind == "float16":
        return matrix.astype(np.float16)
    if kind in ("binary", "ubinary"):
        packed = np.packbits(matrix > 0, axis=1)
        return packed if kind == "ubinary" else (packed.astype(np.int16) - 128).astype(np.int8)
    scale = value_range if value_range is not None else default_range(matrix.shape[1])
    if kind == "int8":
        return np.clip(np.rint(matrix * (127.0 / scale)), -127, 127).astype(np.int8)
    return np.clip(np.rint((matrix / scale + 1.0) * 127.5), 0, 255).astype(np.uint8)


def dequantize(
    stored: np.ndarray, vector_type: str, dimensions: int, value_range: float | None = None
) -> np.ndarray:
    """Float32 approximations of stored vectors, for scoring: binary types become ``+-1/sqrt(d)`` per
    dimension (so dot products rank as Hamming distance does)."""
    kind = check_vector_type(vector_type)
    matrix = np.asarray(stored)
    if kind in ("float32", "float16"):
        return matrix.astype(np.float32)
    if kind in ("binary", "ubinary"):
        packed = matrix.astype(np.int16) + 128 if kind == "binary" else matrix
        bits = np.unpackbits(packed.astype(np.uint8), axis=1)[:, :dimensions]
        return ((bits.astype(np.float32) * 2.0 - 1.0) / math.sqrt(dimensions)).astype(np.float32)
    scale = value_range if value_range is not None else default_range(dimensions)
    if kind == "int8":
        return (matrix.astype(np.float32) * (scale / 127.0)).astype(np.float32)
    return ((matrix.astype(np.float32) / 127.5 - 1.0) * scale).astype(np.float32)


def compact(
    vectors: np.ndarray, vector_type: str, dimensions: int | None = None, value_range: float | None = None
) -> np.ndarray:
    """Cut, normalise, then quantise: the whole path from a model's vectors to stored ones."""
    return quantize(cut_normalise(vectors, dimensions), vector_type, value_range)
