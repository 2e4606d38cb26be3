"""Compact vectors made by the model step (backend.vectors) are the client's definitions
(qwen3vl_client.bulk.quantize) to the byte; the step makes them only for requests that ask, after the
Matryoshka cut and normalisation."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from backend import vectors
from backend.embedding.model import EmbeddingModel, embedding_output
from backend.errors import InputError
from backend.protocol import PreparedItem
from backend.settings import ModelSettings
from backend.wire import pack_rows
from tests.drivers import run_model_requests

# The module itself (the package exports a function of the same name).
quantize = importlib.import_module("qwen3vl_client.bulk.quantize")

COMPACT = tuple(vectors.OUTPUTS)


def unit_rows(rows: int, width: int, seed: int) -> np.ndarray:
    return quantize.cut_normalise(np.random.default_rng(seed).normal(size=(rows, width)))


def awkward_rows(width: int) -> np.ndarray:
    """Exact zeros (the sign bit's edge), components at and beyond the int8 range, and rounding ties."""
    scale = quantize.default_range(width)
    row = np.zeros(width, dtype=np.float32)
    row[:6] = [scale, -scale, 2 * scale, -2 * scale, 0.5 * scale / 127.0, -0.5 * scale / 127.0]
    return np.stack([row, -row, np.zeros(width, dtype=np.float32)])


def test_the_names_agree_with_the_client():
    assert vectors.VECTOR_TYPES == quantize.VECTOR_TYPES
    assert vectors.INT8_SIGMAS == quantize.INT8_SIGMAS
    for vector_type, (_, dtype) in vectors.OUTPUTS.items():
        assert dtype == quantize.STORAGE_DTYPES[vector_type]


@pytest.mark.parametrize("vector_type", COMPACT)
@pytest.mark.parametrize("width", [64, 100, 257, 2048])
@pytest.mark.parametrize("value_range", [0.0, 0.05, 1.0])
def test_backend_and_client_give_the_same_bytes(vector_type, width, value_range):
    unit = np.concatenate([unit_rows(40, width, width), awkward_rows(width)])
    client = quantize.quantize(unit, vector_type, value_range or None)
    for row, expected in zip(unit, client):
        got = vectors.quantize_row(row, vector_type, value_range)
        assert got.dtype == expected.dtype
        assert got.tobytes() == expected.tobytes()


def test_binary_packs_the_first_dimension_into_the_high_bit():
    row = np.full(16, -0.25, dtype=np.float32)
    row[0] = row[9] = 0.25  # dimension 0 -> bit 7 of byte 0; dimension 9 -> bit 6 of byte 1
    assert vectors.quantize_row(row, "ubinary").tolist() == [0b1000_0000, 0b0100_0000]
    assert vectors.quantize_row(row, "binary").tolist() == [0b1000_0000 - 128, 0b0100_0000 - 128]
    row[3] = 0.0  # not positive: 0
    assert vectors.quantize_row(row, "ubinary").tolist() == [0b1000_0000, 0b0100_0000]


def test_types_and_ranges_are_checked():
    assert vectors.parse_types(None) == ()
    rows = np.array([[b"binary", b"int8"], [b"float32", b""]], dtype=object)
    assert vectors.parse_types(rows) == ("int8", "binary")  # any row, fixed order, float32 is EMBEDDING
    with pytest.raises(InputError, match="EMBEDDING_TYPES.*'int4' is not one of"):
        vectors.parse_types(np.array([[b"int4"]], dtype=object))
    assert vectors.parse_ranges(np.array([[0.5], [0.0]], dtype=np.float32), 2) == [0.5, 0.0]
    with pytest.raises(InputError, match="EMBEDDING_RANGE"):
        vectors.parse_ranges(np.array([[-1.0]], dtype=np.float32), 1)


def test_narrower_rows_are_zero_padded_in_their_own_packed_width():
    wide, narrow = unit_rows(1, 128, 1)[0], unit_rows(1, 64, 2)[0]
    items = [PreparedItem(input_ids=np.arange(3), vector_types=("ubinary",))] * 2
    out = embedding_output(items, [wide, narrow])["EMBEDDING_UBINARY"]
    assert out.shape == (2, 16)
    assert out[1, :8].tobytes() == quantize.quantize(narrow[None], "ubinary")[0].tobytes()
    assert not out[1, 8:].any()


def test_no_compact_output_unless_asked():
    items = [PreparedItem(input_ids=np.arange(3))]
    assert set(embedding_output(items, [unit_rows(1, 64, 3)[0]])) == {"EMBEDDING", "TOKEN_COUNT"}


@pytest.fixture(scope="module")
def model(tiny_model_path):
    return EmbeddingModel(ModelSettings(model_path=str(tiny_model_path), device="cpu", dtype="float32"))


def test_the_model_step_cuts_normalises_then_quantises(model):
    rng = np.random.default_rng(7)
    items = [PreparedItem(input_ids=rng.integers(0, 150_000, size=n).astype(np.int64)) for n in (9, 12)]
    plain = pack_rows(items, pad_token_id=151643)
    dims = np.array([[64], [64]], dtype=np.int32)
    asked = {
        **plain,
        "EMBED_DIM": dims,
        vectors.TYPES_INPUT: np.array([[t.encode() for t in COMPACT]] * 2, dtype=object),
        vectors.RANGE_INPUT: np.array([[0.0], [0.2]], dtype=np.float32),
    }
    without, with_types = run_model_requests(model, [{**plain, "EMBED_DIM": dims}, asked])
    assert isinstance(without, dict) and isinstance(with_types, dict)
    assert set(without) == {"EMBEDDING", "TOKEN_COUNT"}
    np.testing.assert_array_equal(without["EMBEDDING"], with_types["EMBEDDING"])  # unchanged by asking
    full = run_model_requests(model, [plain])[0]
    assert isinstance(full, dict)
    for vector_type in COMPACT:
        name = vectors.OUTPUTS[vector_type][0]
        for row, value_range in enumerate((None, 0.2)):
            # Cut to 64 and normalise the full vector, then quantise: the client's compact() of EMBEDDING.
            source = full["EMBEDDING"][row : row + 1]
            expected = quantize.compact(source, vector_type, 64, value_range)[0]
            unit = with_types["EMBEDDING"][row]
            assert np.allclose(unit, quantize.cut_normalise(source, 64)[0], atol=1e-6)
            got = with_types[name][row]
            same = quantize.quantize(unit[None], vector_type, value_range)[0]
            assert got.tobytes() == same.tobytes()
            # From the full vector the bytes agree too, but for a component on a rounding edge.
            assert np.mean(got.view(np.uint8) == expected.view(np.uint8)) > 0.95
