"""Compact vector types: cut, normalise, quantise, and back."""

from __future__ import annotations

import numpy as np
import pytest

from qwen3vl_client.bulk.quantize import (
    STORAGE_DTYPES,
    VECTOR_TYPES,
    calibrate_range,
    compact,
    cut_normalise,
    default_range,
    dequantize,
    packed_width,
    quantize,
)


def unit_vectors(rows: int = 50, width: int = 64, seed: int = 0) -> np.ndarray:
    return cut_normalise(np.random.default_rng(seed).normal(size=(rows, width)))


def test_cut_normalise_cuts_first_then_normalises():
    vectors = np.array([[3.0, 4.0, 12.0], [0.0, 0.0, 5.0]], dtype=np.float32)
    cut = cut_normalise(vectors, 2)
    np.testing.assert_allclose(cut, [[0.6, 0.8], [0.0, 0.0]])  # a zero row stays zero
    np.testing.assert_allclose(np.linalg.norm(cut_normalise(vectors), axis=1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError):
        cut_normalise(vectors, 4)


@pytest.mark.parametrize("vector_type", VECTOR_TYPES)
def test_every_type_has_its_storage_dtype_and_width(vector_type):
    unit = unit_vectors(width=60)
    stored = quantize(unit, vector_type)
    assert stored.dtype == STORAGE_DTYPES[vector_type]
    assert stored.shape == (50, packed_width(vector_type, 60))
    again = quantize(unit, vector_type)
    assert stored.tobytes() == again.tobytes()  # reproducible to the byte


def test_int8_and_uint8_use_the_documented_scale():
    unit = unit_vectors(width=64)
    scale = default_range(64)
    assert scale == pytest.approx(0.5)  # 4 / sqrt(64)
    expected = np.clip(np.rint(unit * 127 / scale), -127, 127).astype(np.int8)
    np.testing.assert_array_equal(quantize(unit, "int8"), expected)
    expected_u = np.clip(np.rint((unit / scale + 1) * 127.5), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(quantize(unit, "uint8"), expected_u)
    assert default_range(4) == 1.0  # never wider than a unit vector's range


@pytest.mark.parametrize("vector_type", ["float16", "int8", "uint8"])
def test_dequantised_vectors_are_close(vector_type):
    unit = unit_vectors(width=256)
    back = dequantize(quantize(unit, vector_type), vector_type, 256)
    step = default_range(256) / 127
    tolerance = 1e-3 if vector_type == "float16" else step
    assert np.abs(back - unit).max() <= tolerance


def test_binary_packs_sign_bits_high_bit_first_and_binary_is_ubinary_minus_128():
    unit = np.array([[0.5, -0.5, 0.1, -0.1, 0.2, 0.3, -0.2, 0.4, 0.1]], dtype=np.float32)
    ubinary = quantize(unit, "ubinary")
    assert ubinary.tolist() == [[0b10101101, 0b10000000]]  # 9 dimensions: 2 bytes, the last one padded
    binary = quantize(unit, "binary")
    assert binary.tolist() == [[0b10101101 - 128, 0b10000000 - 128]]
    signs = dequantize(binary, "binary", 9)
    np.testing.assert_array_equal(np.sign(signs), np.sign(unit))
    np.testing.assert_allclose(np.linalg.norm(signs, axis=1), 1.0, rtol=1e-6)


def test_compact_is_cut_normalise_quantise():
    vectors = np.random.default_rng(3).normal(size=(4, 32)).astype(np.float32) * 7
    np.testing.assert_array_equal(
        compact(vectors, "int8", 16), quantize(cut_normalise(vectors, 16), "int8", default_range(16))
    )


def test_calibrated_range_keeps_the_quantile():
    unit = unit_vectors(rows=200, width=64)
    measured = calibrate_range(unit, 1.0)
    assert measured == pytest.approx(float(np.abs(unit).max()))
    stored = quantize(unit, "int8", measured)
    assert np.abs(stored).max() == 127


def test_unknown_type_is_refused():
    with pytest.raises(ValueError, match="vector type"):
        quantize(unit_vectors(), "int4")
