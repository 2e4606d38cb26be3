"""The KServe v2 REST body <-> Triton's gRPC messages, without I/O: an infer request (JSON tensors or the
binary tensor data extension) checked and turned into a ``ModelInferRequest``, a ``ModelInferResponse``
turned into the REST answer (JSON or JSON header + binary outputs), and Triton's protobuf replies
(metadata, config, statistics) in the JSON that Triton's own HTTP front writes.

Why here and not in tritonserver: the 2.51 wheel's HTTP parser recurses on nesting (a 120 KB body
segfaults it) and inflates compressed bodies whole (docs/shared PLATFORM.md); the gateway parses within
its limits and hands Triton only gRPC. Every check names the tensor it concerns and is a 400; counts are
Python integers, so a shape cannot wrap the way a 32-bit batch size does in Triton.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from tritonclient.grpc import service_pb2

# Nested "data" lists deeper than this are refused (a tensor of this rank is past any model's).
MAX_DATA_DEPTH = 32
# Each dimension of a shape: Triton keeps the batch size in 32 bits.
MAX_DIMENSION = 2**31 - 1
HEADER_LENGTH = "Inference-Header-Content-Length"
# datatype -> numpy dtype of its raw (little-endian) bytes; BYTES and BF16 are handled by name.
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(code)
    for name, code in (
        ("BOOL", "?"),
        ("UINT8", "<u1"),
        ("UINT16", "<u2"),
        ("UINT32", "<u4"),
        ("UINT64", "<u8"),
        ("INT8", "<i1"),
        ("INT16", "<i2"),
        ("INT32", "<i4"),
        ("INT64", "<i8"),
        ("FP16", "<f2"),
        ("FP32", "<f4"),
        ("FP64", "<f8"),
    )
}
DATATYPES = frozenset({*DTYPES, "BF16", "BYTES"})
_LENGTH = struct.Struct("<I")
_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


class BadRequest(ValueError):
    """A request the caller can fix: answered 400 with this message."""


@dataclass
class InferCall:
    """A checked infer request: the gRPC message and how each output goes back (binary or JSON)."""

    request: service_pb2.ModelInferRequest
    binary_outputs: dict[str, bool] = field(default_factory=dict)  # requested outputs by name
    binary_default: bool = False  # for outputs not named in the request


def header_length(value: str, body_size: int) -> int | None:
    """The ``Inference-Header-Content-Length`` header: None when absent, else the JSON part's size."""
    if not value:
        return None
    if not value.isdigit() or not 0 < int(value) <= body_size:
        raise BadRequest(
            f"{HEADER_LENGTH} must be a byte count from 1 to the body's size ({body_size}), got {value!r}"
        )
    return int(value)


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{where} must be a string, got {type(value).__name__}")
    return value


def _parameters(value: Any, where: str, target: Any, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """``parameters`` (an object of booleans, integers and strings) copied into a gRPC parameter map."""
    if value is None:
        return {}
    parameters = _object(value, where)
    for key, entry in parameters.items():
        if key in skip:
            continue
        if isinstance(entry, bool):
            target[key].bool_param = entry
        elif isinstance(entry, int):
            if not -(2**63) <= entry < 2**63:
                raise BadRequest(f"{where}.{key} = {entry} is out of the 64-bit range")
            target[key].int64_param = entry
        elif isinstance(entry, str):
            target[key].string_param = entry
        else:
            raise BadRequest(f"{where}.{key} must be a boolean, an integer or a string")
    return parameters


def _shape(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or len(value) > MAX_DATA_DEPTH:
        raise BadRequest(f"input '{name}': shape must be a list of at most {MAX_DATA_DEPTH} integers")
    for index, dimension in enumerate(value):
        if type(dimension) is not int or not 0 <= dimension <= MAX_DIMENSION:
            raise BadRequest(
                f"input '{name}': shape[{index}] = {dimension!r} is not an integer from 0 to {MAX_DIMENSION}"
            )
    return value


def _leaves(data: Any, name: str) -> list[Any]:
    """The values of ``data`` (a list, maybe nested in row-major order) as one flat list; iterative, so
    no nesting can exhaust a stack."""
    if not isinstance(data, list):
        raise BadRequest(f"input '{name}': data must be a list")
    if not any(type(entry) is list for entry in data):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for entry in stack[-1]:
            if type(entry) is list:
                if len(stack) >= MAX_DATA_DEPTH:
                    raise BadRequest(f"input '{name}': data nested deeper than {MAX_DATA_DEPTH} lists")
                stack.append(iter(entry))
                break
            flat.append(entry)
        else:
            stack.pop()
    return flat


def _json_tensor(data: Any, name: str, datatype: str, count: int) -> bytes:
    """The raw bytes of a tensor sent as JSON ``data``, each value checked against ``datatype``."""
    values = _leaves(data, name)
    if len(values) != count:
        raise BadRequest(f"input '{name}': data has {len(values)} values, its shape holds {count}")
    if datatype == "BYTES":
        if not all(type(value) is str for value in values):
            raise BadRequest(f"input '{name}': BYTES data must be strings")
        encoded = [value.encode("utf-8", "surrogatepass") for value in values]
        return b"".join(_LENGTH.pack(len(each)) + each for each in encoded)
    if datatype == "BF16":
        raise BadRequest(f"input '{name}': BF16 tensors must be sent as binary data")
    dtype = DTYPES[datatype]
    if dtype.kind == "b":
        if not all(type(value) is bool for value in values):
            raise BadRequest(f"input '{name}': BOOL data must be true or false")
        return np.array(values, dtype=dtype).tobytes()
    if dtype.kind in "iu":
        if not all(type(value) is int for value in values):
            raise BadRequest(f"input '{name}': {datatype} data must be integers")
        if values:
            info = np.iinfo(dtype)
            low, high = min(values), max(values)
            if low < info.min or high > info.max:
                bad = low if low < info.min else high
                raise BadRequest(f"input '{name}': {bad} is out of the range of {datatype}")
        return np.array(values, dtype=dtype).tobytes()
    if not all(type(value) in (int, float) for value in values):
        raise BadRequest(f"input '{name}': {datatype} data must be numbers")
    try:
        return np.array(values, dtype=np.float64).astype(dtype).tobytes()
    except OverflowError:
        raise BadRequest(f"input '{name}': a value is out of the range of {datatype}") from None


def _binary_tensor(raw: memoryview, name: str, datatype: str, count: int) -> bytes:
    """A tensor sent as binary data: its size must be what the shape and datatype make it."""
    if datatype == "BYTES":
        offset = 0
        for index in range(count):
            if offset + 4 > len(raw):
                raise BadRequest(
                    f"input '{name}': binary data holds {index} BYTES elements, its shape holds {count}"
                )
            (length,) = _LENGTH.unpack_from(raw, offset)
            offset += 4 + length
            if offset > len(raw):
                raise BadRequest(f"input '{name}': BYTES element {index} runs past the tensor's binary data")
        if offset != len(raw):
            raise BadRequest(
                f"input '{name}': binary data has {len(raw) - offset} bytes after its {count} BYTES elements"
            )
        return bytes(raw)
    itemsize = 2 if datatype == "BF16" else DTYPES[datatype].itemsize
    if len(raw) != count * itemsize:
        raise BadRequest(
            f"input '{name}': binary_data_size is {len(raw)} bytes, shape and {datatype} make "
            f"{count * itemsize} bytes"
        )
    return bytes(raw)


def infer_call(header: Any, binary: memoryview, model: str, version: str) -> InferCall:
    """The parsed JSON part of an infer body (``header``) and the bytes after it (``binary``) as a
    checked gRPC request for ``model`` (``version`` "" = Triton's choice)."""
    body = _object(header, "the request body")
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    if "id" in body:
        request.id = _text(body["id"], "id")
    parameters = _parameters(
        body.get("parameters"), "parameters", request.parameters, frozenset({"binary_data_output"})
    )
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise BadRequest("parameters.binary_data_output must be true or false")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("inputs must be a non-empty list of tensors")
    offset = 0
    for position, entry in enumerate(inputs):
        tensor = _object(entry, f"inputs[{position}]")
        name = _text(tensor.get("name"), f"inputs[{position}].name")
        datatype = _text(tensor.get("datatype"), f"input '{name}': datatype")
        if datatype not in DATATYPES:
            raise BadRequest(f"input '{name}': unknown datatype {datatype!r}")
        shape = _shape(tensor.get("shape"), name)
        grpc_input = request.inputs.add(name=name, datatype=datatype, shape=shape)
        own = _parameters(
            tensor.get("parameters"),
            f"input '{name}': parameters",
            grpc_input.parameters,
            frozenset({"binary_data_size"}),
        )
        count = math.prod(shape)
        size = own.get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0:
                raise BadRequest(f"input '{name}': binary_data_size must be a non-negative integer")
            if "data" in tensor:
                raise BadRequest(f"input '{name}': send data or binary_data_size, not both")
            if offset + size > len(binary):
                raise BadRequest(
                    f"input '{name}': binary_data_size {size} runs past the body's binary part "
                    f"({len(binary)} bytes)"
                )
            raw = _binary_tensor(binary[offset : offset + size], name, datatype, count)
            offset += size
        elif "data" in tensor:
            raw = _json_tensor(tensor["data"], name, datatype, count)
        else:
            raise BadRequest(f"input '{name}': no data and no binary_data_size")
        request.raw_input_contents.append(raw)
    if offset != len(binary):
        raise BadRequest(
            f"the body has {len(binary)} bytes after its JSON header, the inputs' binary_data_size "
            f"account for {offset}"
        )
    call = InferCall(request, binary_default=binary_default)
    outputs = body.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise BadRequest("outputs must be a list")
        for position, entry in enumerate(outputs):
            output = _object(entry, f"outputs[{position}]")
            name = _text(output.get("name"), f"outputs[{position}].name")
            grpc_output = request.outputs.add(name=name)
            own = _parameters(
                output.get("parameters"),
                f"output '{name}': parameters",
                grpc_output.parameters,
                frozenset({"binary_data"}),
            )
            wanted = own.get("binary_data", binary_default)
            if not isinstance(wanted, bool):
                raise BadRequest(f"output '{name}': binary_data must be true or false")
            call.binary_outputs[name] = wanted
    return call


def _bytes_elements(raw: bytes) -> list[bytes]:
    elements, offset = [], 0
    while offset + 4 <= len(raw):
        (length,) = _LENGTH.unpack_from(raw, offset)
        elements.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return elements


def _json_values(raw: bytes, datatype: str) -> list[Any]:
    if datatype == "BYTES":
        return [each.decode("utf-8", "replace") for each in _bytes_elements(raw)]
    if datatype == "BF16":
        widened = np.frombuffer(raw, dtype="<u2").astype("<u4") << 16
        return widened.view("<f4").tolist()
    return np.frombuffer(raw, dtype=DTYPES[datatype]).tolist()


def infer_answer(call: InferCall, response: service_pb2.ModelInferResponse) -> tuple[dict[str, Any], bytes]:
    """Triton's reply as the REST answer: the JSON header and the binary part (b"" when no output is
    binary; then the header is the whole body)."""
    outputs: list[dict[str, Any]] = []
    binary: list[bytes] = []
    for index, output in enumerate(response.outputs):
        raw = response.raw_output_contents[index] if index < len(response.raw_output_contents) else b""
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.shape),
        }
        if call.binary_outputs.get(output.name, call.binary_default):
            entry["parameters"] = {"binary_data_size": len(raw)}
            binary.append(raw)
        else:
            entry["data"] = _json_values(raw, output.datatype)
        outputs.append(entry)
    answer: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        answer["id"] = response.id
    if response.parameters:
        answer["parameters"] = {key: _parameter(value) for key, value in response.parameters.items()}
    answer["outputs"] = outputs
    return answer, b"".join(binary)


def _parameter(value: service_pb2.InferParameter) -> Any:
    kind = value.WhichOneof("parameter_choice")
    return getattr(value, kind) if kind else None


def model_metadata(reply: service_pb2.ModelMetadataResponse) -> dict[str, Any]:
    """``GET /v2/models/{name}``, as Triton's HTTP front writes it (shapes as numbers)."""

    def tensors(entries: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in entries]

    return {
        "name": reply.name,
        "versions": list(reply.versions),
        "platform": reply.platform,
        "inputs": tensors(reply.inputs),
        "outputs": tensors(reply.outputs),
    }


def message_json(message: Message) -> dict[str, Any]:
    """A protobuf reply (model config, statistics) as Triton's HTTP front writes it: field names as in
    the .proto, fields at their defaults included, 64-bit integers as JSON numbers (protobuf's JSON
    mapping writes them as strings)."""
    value = json_format.MessageToDict(
        message, preserving_proto_field_name=True, including_default_value_fields=True
    )
    _numbers(value, message.DESCRIPTOR)
    return value


def _numbers(value: dict[str, Any], descriptor: Descriptor) -> None:
    for field_ in descriptor.fields:
        if field_.name not in value:
            continue
        entry = value[field_.name]
        repeated = field_.label == FieldDescriptor.LABEL_REPEATED
        kind = field_.message_type
        if kind is not None and kind.GetOptions().map_entry:
            item = kind.fields_by_name["value"]
            for key in entry:
                if item.message_type is not None:
                    _numbers(entry[key], item.message_type)
                elif item.type in _INT64_TYPES:
                    entry[key] = int(entry[key])
        elif kind is not None:
            for each in entry if repeated else [entry]:
                if isinstance(each, dict):
                    _numbers(each, kind)
        elif field_.type in _INT64_TYPES:
            value[field_.name] = [int(each) for each in entry] if repeated else int(entry)
