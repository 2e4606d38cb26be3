"""/v1/embeddings' base64 vectors in every embed_dtype and endianness, bit for bit as vLLM's torch casts."""

from __future__ import annotations

import base64
import sys

import numpy as np
import pytest
import torch

from gateway.encoding import FP8_FORMATS, encode_vector, vector_bytes
from gateway.protocol import EmbeddingRequest

TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
VIEWS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.int16}


def vllm_bytes(vector: np.ndarray, embed_dtype: str, endianness: str) -> bytes:
    """What vLLM's tensor2binary writes: cast with torch, view as a numpy-known dtype, swap if asked."""
    cast = torch.from_numpy(vector).to(TORCH_DTYPES[embed_dtype])
    array = cast.view(VIEWS.get(embed_dtype, torch.uint8)).numpy()
    if endianness != "native" and endianness != sys.byteorder:
        array = array.byteswap()
    return array.tobytes()


def sample() -> np.ndarray:
    """Unit-vector components, tiny ones (fp8 subnormals and underflow), exact ties and signed zeros."""
    rng = np.random.default_rng(0)
    unit = rng.normal(size=4096)
    unit /= np.linalg.norm(unit)
    edges = [0.0, -0.0, 1.0, -1.0, 2.0**-9, 2.0**-10, 3 * 2.0**-11, 2.0**-16, 2.0**-17, 0.4375, 0.46875]
    ties = np.float32(1.0) + np.float32(2.0**-8) * np.arange(1, 40, 2)  # halfway between bfloat16 values
    logs = np.logspace(-12, 0, 2000) * rng.choice([-1, 1], size=2000)
    return np.concatenate([unit, edges, ties - 1, ties / 2, logs]).astype(np.float32)


@pytest.mark.parametrize("embed_dtype", list(TORCH_DTYPES))
@pytest.mark.parametrize("endianness", ["native", "big", "little"])
def test_bytes_equal_vllms_torch_cast(embed_dtype, endianness):
    vector = sample()
    assert vector_bytes(vector, embed_dtype, endianness) == vllm_bytes(vector, embed_dtype, endianness)


def test_base64_and_float_formats():
    vector = sample()[:8]
    as_float = encode_vector(vector, "float", "float16", "big")
    assert as_float == vector.tolist()  # embed_dtype and endianness only shape base64, as in vLLM
    encoded = encode_vector(vector, "base64", "float16", "big")
    assert isinstance(encoded, str)
    assert (
        np.frombuffer(base64.b64decode(encoded), dtype=">f2").tolist() == vector.astype(np.float16).tolist()
    )
    assert encode_vector(vector, "base64") == base64.b64encode(vector.astype("<f4").tobytes()).decode()


def test_fp8_formats_are_the_two_vllm_offers():
    assert set(FP8_FORMATS) == {"fp8_e4m3", "fp8_e5m2"}


@pytest.mark.parametrize(
    "field, value", [("embed_dtype", "int8"), ("embed_dtype", "binary"), ("endianness", "middle")]
)
def test_values_vllm_does_not_take_are_refused(field, value):
    with pytest.raises(ValueError, match="Input should be"):
        EmbeddingRequest.model_validate({"input": "a", field: value})
