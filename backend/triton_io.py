"""The only place that touches `triton_python_backend_utils`: tensors in, responses out, errors mapped.

The module exists only inside Triton's Python stub, so it is imported lazily and never by unit tests.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from backend.errors import CancelledError, InputError, UnavailableError
from backend.protocol import Result


def _pb():
    import triton_python_backend_utils as pb_utils

    return pb_utils


def configure_logging(model_name: str) -> None:
    """Backend log lines go to the server's stderr with the model name, once per stub process."""
    root = logging.getLogger()
    if not any(getattr(handler, "_qwen3vl", False) for handler in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s [{model_name}] %(name)s: %(message)s")
        )
        handler._qwen3vl = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.setLevel(logging.INFO)


def freeze_loaded_objects() -> None:
    """The end of initialize(): what loading created (the model step holds ~330,000 objects) leaves the
    garbage collector's reach. Otherwise every full collection walks all of it (~150 ms in the model step)
    while requests wait: at 1-4 in flight the slowest 0.1 % of requests took 170-200 ms instead of 49-77 ms
    (tiny model, 2 cores; p50 15 / 32 ms)."""
    import gc

    gc.collect()
    gc.freeze()


def read_inputs(request, names: Iterable[str]) -> dict[str, np.ndarray | None] | None:
    """The request's tensors by name (None for an absent optional input); None for the whole request when its
    client has cancelled it, so that no step spends a forward on an answer nobody reads."""
    pb_utils = _pb()
    if request.is_cancelled():
        return None
    inputs = {}
    for name in names:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        inputs[name] = None if tensor is None else tensor.as_numpy()
    return inputs


def is_bulk(request) -> bool:
    """Whether the client marked the request as bulk work (backend.protocol.PRIORITY_PARAMETER); an
    ensemble hands its request's parameters to every step."""
    from backend.runtime.priority import is_bulk_parameters

    return is_bulk_parameters(request.parameters())


def to_response(result: Result):
    pb_utils = _pb()
    if isinstance(result, InputError):
        return pb_utils.InferenceResponse(
            error=pb_utils.TritonError(str(result), pb_utils.TritonError.INVALID_ARG)
        )
    if isinstance(result, CancelledError):
        return pb_utils.InferenceResponse(
            error=pb_utils.TritonError(str(result), pb_utils.TritonError.CANCELLED)
        )
    if isinstance(result, UnavailableError):
        return pb_utils.InferenceResponse(
            error=pb_utils.TritonError(str(result), pb_utils.TritonError.UNAVAILABLE)
        )
    if isinstance(result, Exception):
        message = f"internal error: {type(result).__name__}: {result}"
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL))
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor(name, array) for name, array in result.items()]
    )


def returned_responses(results: Sequence[Result | None]) -> list:
    """execute()'s return list: a response per result, None for a request its response sender answers."""
    return [None if result is None else to_response(result) for result in results]


def answer_later(request) -> tuple[Callable[[Result], None], Callable[[], bool]]:
    """(answer, cancelled) for a request answered after execute() has returned, as the model steps do
    (backend.runtime.worker): its response sender, which a default-mode (non-decoupled) model may use
    since Triton 24.06, sending the one response with the FINAL flag; and the client's cancellation, read
    through the sender because the request itself is released when execute() returns."""
    pb_utils = _pb()
    sender = request.get_response_sender()

    def answer(result: Result) -> None:
        sender.send(to_response(result), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    return answer, sender.is_cancelled


def model_parameters(args: Mapping[str, str]) -> dict[str, str]:
    import json

    from backend.settings import read_parameters

    return read_parameters(json.loads(args["model_config"]))


def instance_placement(args: Mapping[str, str]) -> tuple[int, int | None, int]:
    """(instance index within the model, Triton's GPU id for KIND_GPU instances else None, how many
    instances the model has in all). Instance names look like `<model>_<group>_<index>`."""
    import json

    name = args.get("model_instance_name", "")
    tail = name.rsplit("_", 1)[-1]
    index = int(tail) if tail.isdigit() else 0
    gpu = int(args["model_instance_device_id"]) if args.get("model_instance_kind") == "GPU" else None
    groups = json.loads(args.get("model_config") or "{}").get("instance_group") or [{}]
    count = sum(max(1, int(group.get("count", 1))) for group in groups)
    return index, gpu, count
