"""How ``/v1/embeddings`` writes a vector, as vLLM 0.33 does (``vllm/utils/serial_utils.py``):
``encoding_format: "float"`` is a JSON list of the float32 values (``embed_dtype`` and ``endianness`` do not
apply); ``"base64"`` is the vector cast to ``embed_dtype`` (float32, float16, bfloat16, fp8_e4m3, fp8_e5m2),
its raw bytes in ``endianness`` (``native``: this host's order), base64-encoded.

vLLM casts with torch; the gateway has no torch, so the casts are written here in numpy with torch's
rounding (round to nearest, ties to even, subnormals kept); tests/unit/test_gateway_encoding.py checks them
against torch bit for bit.
"""

from __future__ import annotations

import base64
import sys
from typing import Literal

import numpy as np

EmbedDType = Literal["float32", "float16", "bfloat16", "fp8_e4m3", "fp8_e5m2"]
Endianness = Literal["native", "big", "little"]
# fp8 formats: (mantissa bits, exponent bias). e4m3 is torch's float8_e4m3fn (no infinities).
FP8_FORMATS = {"fp8_e4m3": (3, 7), "fp8_e5m2": (2, 15)}


def bfloat16_bits(vector: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 words of float32 values, rounded to nearest even (finite inputs)."""
    bits = np.ascontiguousarray(vector, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def fp8_bits(vector: np.ndarray, mantissa_bits: int, bias: int) -> np.ndarray:
    """uint8 fp8 codes of float32 values, rounded to nearest even, subnormals kept (finite inputs within
    the format's range, as unit vectors are)."""
    values = np.asarray(vector, dtype=np.float64)
    sign = (np.signbit(values)).astype(np.uint8) << 7
    magnitude = np.abs(values)
    min_exponent = 1 - bias  # of the smallest normal number
    _, exponent = np.frexp(magnitude)  # magnitude = m * 2**exponent with m in [0.5, 1)
    exponent = np.maximum(exponent - 1, min_exponent)  # as 1.f * 2**e, subnormals at the smallest e
    quantum = np.ldexp(1.0, exponent - mantissa_bits)
    steps = np.rint(magnitude / quantum)  # ties to even; exact in float64
    # A mantissa rounded up to 2.0 carries into the exponent: steps == 2 << mantissa_bits.
    carry = steps >= (2 << mantissa_bits)
    exponent = np.where(carry, exponent + 1, exponent)
    steps = np.where(carry, steps / 2, steps).astype(np.int64)
    normal = steps >= (1 << mantissa_bits)
    field = np.where(normal, exponent + bias, 0).astype(np.int64)
    mantissa = np.where(normal, steps - (1 << mantissa_bits), steps)
    return (sign | ((field << mantissa_bits) | mantissa).astype(np.uint8)).astype(np.uint8)


def vector_bytes(vector: np.ndarray, embed_dtype: str, endianness: str) -> bytes:
    """The vector's raw bytes as vLLM's tensor2binary writes them."""
    if embed_dtype == "float32":
        words: np.ndarray = np.asarray(vector, dtype=np.float32)
    elif embed_dtype == "float16":
        words = np.asarray(vector, dtype=np.float32).astype(np.float16)
    elif embed_dtype == "bfloat16":
        words = bfloat16_bits(vector)
    elif embed_dtype in FP8_FORMATS:
        words = fp8_bits(vector, *FP8_FORMATS[embed_dtype])
    else:
        raise ValueError(f"unknown embed_dtype {embed_dtype!r}")
    if endianness != "native" and endianness != sys.byteorder:
        words = words.byteswap()
    return np.ascontiguousarray(words).tobytes()


def encode_vector(
    vector: np.ndarray, encoding_format: str, embed_dtype: str = "float32", endianness: str = "native"
) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector_bytes(vector, embed_dtype, endianness)).decode("ascii")
    return np.asarray(vector, dtype=np.float32).tolist()
