"""The KServe v2 REST codec without a server: bodies in (JSON and binary tensors), checks naming the tensor,
Triton's replies out in the JSON Triton's HTTP front writes."""

from __future__ import annotations

import json
import struct
import time

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2, service_pb2

from gateway import kserve_codec as codec
from gateway.bodies import parse_json
from gateway.errors import GatewayError


def call(body: dict, binary: bytes = b"") -> codec.InferCall:
    return codec.infer_call(body, memoryview(binary), "m", "")


def tensor(name: str, datatype: str, shape: list, **fields) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, **fields}


def bytes_payload(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(each)) + each for each in elements)


def test_json_tensors_become_raw_contents_in_triton_layout():
    request = call(
        {
            "id": "r1",
            "inputs": [
                tensor("TEXT", "BYTES", [2, 1], data=[["héllo"], ["x"]]),
                tensor("DIMENSIONS", "INT32", [2, 1], data=[64, 128]),
                tensor("RAW", "BOOL", [1], data=[True]),
                tensor("F", "FP16", [2], data=[1, 0.5]),
            ],
            "parameters": {"priority": 1, "note": "n", "flag": False},
        }
    ).request
    assert request.id == "r1" and request.model_name == "m"
    assert [list(each.shape) for each in request.inputs] == [[2, 1], [2, 1], [1], [2]]
    assert request.raw_input_contents[0] == bytes_payload("héllo".encode(), b"x")
    assert np.frombuffer(request.raw_input_contents[1], "<i4").tolist() == [64, 128]
    assert request.raw_input_contents[2] == b"\x01"
    assert np.frombuffer(request.raw_input_contents[3], "<f2").tolist() == [1.0, 0.5]
    assert request.parameters["priority"].int64_param == 1
    assert request.parameters["note"].string_param == "n"
    assert request.parameters["flag"].bool_param is False


def test_binary_tensors_are_taken_in_order_and_sized_by_shape():
    text = bytes_payload(b"a", b"bc")
    dims = np.array([7, 8], "<i4").tobytes()
    result = call(
        {
            "inputs": [
                tensor("TEXT", "BYTES", [2, 1], parameters={"binary_data_size": len(text)}),
                tensor("DIMENSIONS", "INT32", [2, 1], parameters={"binary_data_size": 8}),
            ],
            "outputs": [{"name": "EMBEDDING", "parameters": {"binary_data": True}}, {"name": "TOKEN_COUNT"}],
        },
        text + dims,
    )
    assert list(result.request.raw_input_contents) == [text, dims]
    assert "binary_data_size" not in result.request.inputs[0].parameters  # REST-only: not forwarded
    assert result.binary_outputs == {"EMBEDDING": True, "TOKEN_COUNT": False}
    assert [each.name for each in result.request.outputs] == ["EMBEDDING", "TOKEN_COUNT"]


@pytest.mark.parametrize(
    ("body", "binary", "message"),
    [
        (
            {"inputs": [tensor("D", "INT32", [2, 1], data=[1])]},
            b"",
            "input 'D': data has 1 values, its shape holds 2",
        ),
        (
            {"inputs": [tensor("D", "INT32", [1], data=[2**32])]},
            b"",
            "input 'D': 4294967296 is out of the range",
        ),
        ({"inputs": [tensor("D", "INT32", [1], data=[1.5])]}, b"", "input 'D': INT32 data must be integers"),
        ({"inputs": [tensor("D", "INT32", [1], data=[True])]}, b"", "input 'D': INT32 data must be integers"),
        ({"inputs": [tensor("T", "BYTES", [1], data=[3])]}, b"", "input 'T': BYTES data must be strings"),
        ({"inputs": [tensor("F", "FP32", [1], data=["1"])]}, b"", "input 'F': FP32 data must be numbers"),
        ({"inputs": [tensor("B", "BOOL", [1], data=[1])]}, b"", "input 'B': BOOL data must be true or false"),
        ({"inputs": [tensor("D", "INT33", [1], data=[1])]}, b"", "input 'D': unknown datatype 'INT33'"),
        ({"inputs": [tensor("D", "INT32", [2**40, 0], data=[])]}, b"", "input 'D': shape[0] = 1099511627776"),
        ({"inputs": [tensor("D", "INT32", [-1], data=[])]}, b"", "input 'D': shape[0] = -1"),
        ({"inputs": [tensor("D", "INT32", [1])]}, b"", "input 'D': no data and no binary_data_size"),
        ({"inputs": []}, b"", "inputs must be a non-empty list"),
        ({"inputs": [tensor("D", "INT32", [1], data=[1])]}, b"xx", "2 bytes after its JSON header"),
        (
            {"inputs": [tensor("D", "INT32", [2], parameters={"binary_data_size": 4})]},
            b"abcd",
            "input 'D': binary_data_size is 4 bytes, shape and INT32 make 8 bytes",
        ),
        (
            {"inputs": [tensor("D", "INT32", [2], parameters={"binary_data_size": 8})]},
            b"abcd",
            "input 'D': binary_data_size 8 runs past the body's binary part (4 bytes)",
        ),
        (
            {"inputs": [tensor("T", "BYTES", [2], parameters={"binary_data_size": 5})]},
            bytes_payload(b"a"),
            "input 'T': binary data holds 1 BYTES elements, its shape holds 2",
        ),
        (
            {"inputs": [tensor("T", "BYTES", [1], parameters={"binary_data_size": 6})]},
            struct.pack("<I", 99) + b"ab",
            "input 'T': BYTES element 0 runs past",
        ),
        ({"inputs": [tensor("T", "BF16", [1], data=[1.0])]}, b"", "BF16 tensors must be sent as binary data"),
        ({"inputs": [tensor("D", "INT32", [1], data=[1])], "outputs": [{"name": 3}]}, b"", "outputs[0].name"),
        ({"inputs": [tensor("D", "INT32", [1], data=[1])], "parameters": {"x": [1]}}, b"", "parameters.x"),
    ],
)
def test_what_the_caller_can_fix_is_named(body, binary, message):
    with pytest.raises(codec.BadRequest, match=None) as raised:
        call(body, binary)
    assert message in str(raised.value)


def test_nesting_is_bounded_without_recursion():
    deep: list = [1]
    for _ in range(codec.MAX_DATA_DEPTH + 5):
        deep = [deep]
    with pytest.raises(codec.BadRequest, match="nested deeper than"):
        call({"inputs": [tensor("D", "INT32", [1], data=deep)]})
    # A 120 KB body nested 60,000 deep (what segfaults tritonserver 2.51) is refused by the parser at once.
    started = time.perf_counter()
    with pytest.raises(GatewayError, match="nested too deeply"):
        parse_json(b"[" * 60_000 + b"]" * 60_000)
    assert time.perf_counter() - started < 0.5


def test_header_length_header():
    assert codec.header_length("", 10) is None
    assert codec.header_length("4", 10) == 4
    for bad in ("0", "11", "-1", "x"):
        with pytest.raises(codec.BadRequest, match="Inference-Header-Content-Length"):
            codec.header_length(bad, 10)


def reply() -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse(model_name="m", model_version="1", id="r1")
    response.outputs.add(name="EMBEDDING", datatype="FP32", shape=[1, 2])
    response.outputs.add(name="TOKEN_COUNT", datatype="INT32", shape=[1, 1])
    response.outputs.add(name="NAMES", datatype="BYTES", shape=[1])
    response.raw_output_contents.extend(
        [np.array([0.5, -1], "<f4").tobytes(), np.array([3], "<i4").tobytes(), bytes_payload(b"ok")]
    )
    return response


def test_answers_in_json_or_binary_as_requested():
    json_call = call({"inputs": [tensor("D", "INT32", [1], data=[1])]})
    answer, binary = codec.infer_answer(json_call, reply())
    assert binary == b""
    assert answer == {
        "model_name": "m",
        "model_version": "1",
        "id": "r1",
        "outputs": [
            {"name": "EMBEDDING", "datatype": "FP32", "shape": [1, 2], "data": [0.5, -1.0]},
            {"name": "TOKEN_COUNT", "datatype": "INT32", "shape": [1, 1], "data": [3]},
            {"name": "NAMES", "datatype": "BYTES", "shape": [1], "data": ["ok"]},
        ],
    }
    binary_call = call(
        {"inputs": [tensor("D", "INT32", [1], data=[1])], "parameters": {"binary_data_output": True}}
    )
    answer, binary = codec.infer_answer(binary_call, reply())
    assert [each["parameters"]["binary_data_size"] for each in answer["outputs"]] == [8, 4, 6]
    assert binary == b"".join(reply().raw_output_contents)


def test_config_and_statistics_keep_64_bit_integers_as_numbers():
    config = model_config_pb2.ModelConfig(name="m", max_batch_size=8)
    config.input.add(name="TEXT", data_type=model_config_pb2.TYPE_STRING, dims=[-1])
    config.dynamic_batching.max_queue_delay_microseconds = 2000
    rendered = codec.message_json(config)
    assert rendered["input"][0]["dims"] == [-1]
    assert rendered["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert rendered["input"][0]["optional"] is False  # defaults included, as Triton writes them
    stats = service_pb2.ModelStatisticsResponse()
    model = stats.model_stats.add(name="m", version="1", inference_count=2**40)
    model.inference_stats.success.ns = 12
    rendered = codec.message_json(stats)
    entry = rendered["model_stats"][0]
    assert entry["inference_count"] == 2**40 and entry["inference_stats"]["success"]["ns"] == 12
    json.dumps(rendered)  # plain JSON types throughout
