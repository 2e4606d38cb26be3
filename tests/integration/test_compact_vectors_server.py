"""Compact vectors from a real tritonserver through tritonclient gRPC: EMBEDDING_TYPES selects them, each
is the client's definition (qwen3vl_client.bulk.quantize) of the EMBEDDING the same request returns."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import tritonclient.grpc as grpc
from tritonclient.utils import InferenceServerException

from backend.vectors import OUTPUTS

pytestmark = pytest.mark.server
quantize = importlib.import_module("qwen3vl_client.bulk.quantize")
TEXTS = ["The capital of China is Beijing.", "Gravity attracts bodies.", "A red bicycle."]


def tensor(name: str, array: np.ndarray, datatype: str) -> grpc.InferInput:
    value = grpc.InferInput(name, list(array.shape), datatype)
    value.set_data_from_numpy(array)
    return value


def request(types: list[str] | None, dimensions: int = 0, value_range: float | None = None) -> list:
    rows = len(TEXTS)
    inputs = [tensor("TEXT", np.array([[t.encode()] for t in TEXTS], dtype=object), "BYTES")]
    if dimensions:
        inputs.append(tensor("DIMENSIONS", np.full((rows, 1), dimensions, dtype=np.int32), "INT32"))
    if types is not None:
        names = np.array([[t.encode() for t in types]] * rows, dtype=object)
        inputs.append(tensor("EMBEDDING_TYPES", names, "BYTES"))
    if value_range is not None:
        inputs.append(tensor("EMBEDDING_RANGE", np.full((rows, 1), value_range, dtype=np.float32), "FP32"))
    return inputs


@pytest.mark.parametrize("dimensions", [0, 64])
def test_each_type_is_the_quantised_embedding(grpc_client, dimensions):
    plain = grpc_client.infer("qwen3_vl_embedding", request(None, dimensions)).as_numpy("EMBEDDING")
    outputs = [grpc.InferRequestedOutput(name) for name, _ in OUTPUTS.values()]
    result = grpc_client.infer(
        "qwen3_vl_embedding",
        request(list(OUTPUTS), dimensions),
        outputs=[grpc.InferRequestedOutput("EMBEDDING"), *outputs],
    )
    embedding = result.as_numpy("EMBEDDING")
    np.testing.assert_array_equal(embedding, plain)  # asking for compact copies changes nothing else
    width = dimensions or embedding.shape[1]
    assert embedding.shape[1] == width
    for vector_type, (name, dtype) in OUTPUTS.items():
        got = result.as_numpy(name)
        assert got.dtype == dtype
        assert got.shape == (len(TEXTS), quantize.packed_width(vector_type, width))
        assert got.tobytes() == quantize.quantize(embedding, vector_type).tobytes()


def test_only_the_compact_output_travels_and_a_range_is_honoured(grpc_client):
    result = grpc_client.infer(
        "qwen3_vl_embedding",
        request(["int8"], value_range=0.05),
        outputs=[grpc.InferRequestedOutput("EMBEDDING_INT8")],
    )
    assert result.as_numpy("EMBEDDING") is None
    embedding = grpc_client.infer("qwen3_vl_embedding", request(None)).as_numpy("EMBEDDING")
    expected = quantize.quantize(embedding, "int8", 0.05)
    assert result.as_numpy("EMBEDDING_INT8").tobytes() == expected.tobytes()


def test_an_unknown_type_is_invalid_arg(grpc_client):
    with pytest.raises(InferenceServerException, match="EMBEDDING_TYPES.*'int4' is not one of") as error:
        grpc_client.infer("qwen3_vl_embedding", request(["int4"]))
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_a_compact_output_not_named_in_embedding_types_is_absent(grpc_client):
    result = grpc_client.infer(
        "qwen3_vl_embedding", request(None), outputs=[grpc.InferRequestedOutput("EMBEDDING_INT8")]
    )
    assert result.as_numpy("EMBEDDING_INT8") is None  # Triton answers without it (and without an error)
    assert not result.get_response().outputs
    assert grpc_client.infer("qwen3_vl_embedding", request(["int8"])).as_numpy("EMBEDDING_INT8") is not None
