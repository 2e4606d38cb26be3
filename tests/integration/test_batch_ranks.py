"""A batch dimension of 2^40 over gRPC, straight to Triton (issue 19, item 5): refused at once with
INVALID_ARGUMENT and the error grammar wherever a step can see it, never amplified, and the server serves on.

tritonserver 2.51 keeps the batch dimension modulo 2^32 (PLATFORM.md). Sent to a step directly, 2^40 rows
arrive as a batch of 0: tensors without their batch dimension, which every step refuses
(backend.protocol.batch_size_of; the model steps used to fail with an INTERNAL IndexError). Through an
ensemble, the composing step receives the one row that was sent, shaped [1, 1], whatever batch was claimed
(checked with a probe model): no step can tell, so a one-input ensemble request answers that one row (with
its batch dimension dropped from the outputs, Triton's doing), at the cost of one row; with two inputs Triton
itself refuses it (their batch sizes then disagree). Clients of the gateway's KServe front have the shape
checked before anything is forwarded.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

pytestmark = pytest.mark.server

HUGE = 2**40
# Well under the hang bound of the fuzz: the refusal reads shapes, never rows.
REFUSED_WITHIN_S = 5.0


def claimed(grpc, name: str, array: np.ndarray, datatype: str, batch: int | None):
    tensor = grpc.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    if batch is not None:
        tensor.set_shape([batch, *array.shape[1:]])
    return tensor


def wire(grpc, batch: int | None, with_image: bool = False, embedding: bool = True) -> list:
    tensors = [
        claimed(grpc, "INPUT_IDS", np.array([[9707, 11, 1879]], np.int64), "INT64", batch),
        claimed(grpc, "SEQ_LEN", np.array([[3]], np.int64), "INT64", batch),
    ]
    if embedding:
        tensors.append(claimed(grpc, "EMBED_DIM", np.array([[0]], np.int32), "INT32", batch))
    return tensors


def text(value: str) -> np.ndarray:
    return np.array([[value.encode()]], dtype=object)


CASES = {
    "qwen3_vl_embedding_preprocess": lambda grpc: [claimed(grpc, "TEXT", text("hello"), "BYTES", HUGE)],
    "qwen3_vl_embedding_model": lambda grpc: wire(grpc, HUGE),
    "qwen3_vl_reranker_preprocess": lambda grpc: [
        claimed(grpc, "QUERY_TEXT", text("q"), "BYTES", HUGE),
        claimed(grpc, "DOCUMENT_TEXT", text("d"), "BYTES", HUGE),
    ],
    "qwen3_vl_reranker_model": lambda grpc: wire(grpc, HUGE, embedding=False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_batch_of_2_to_the_40_is_refused_at_once_with_invalid_argument(grpc_client, case):
    import tritonclient.grpc as grpc
    from tritonclient.utils import InferenceServerException

    model = case
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as caught:
        grpc_client.infer(model, CASES[case](grpc), client_timeout=60)
    seconds = time.monotonic() - started
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT", caught.value.message()
    message = caught.value.message()
    # Ours (the step's grammar: `<INPUT>: expected 2 dimensions, ...`) or Triton's own shape check.
    assert "expected 2 dimensions, the batch dimension first" in message or "batch size" in message, message
    assert "internal error" not in message
    assert seconds < REFUSED_WITHIN_S


# Through an ensemble: (output, values in one row's answer).
ENSEMBLE_CASES = {
    "qwen3_vl_embedding/text": (
        lambda grpc: [claimed(grpc, "TEXT", text("hello"), "BYTES", HUGE)],
        ("EMBEDDING", 128),
    ),
    "qwen3_vl_embedding/token-ids": (
        lambda grpc: [
            claimed(grpc, "TOKEN_IDS", np.array([[9707, 11]], np.int64), "INT64", HUGE),
            claimed(grpc, "RAW", np.array([[True]]), "BOOL", HUGE),
        ],
        ("EMBEDDING", 128),
    ),
    "qwen3_vl_reranker/pair": (
        lambda grpc: [
            claimed(grpc, "QUERY_TEXT", text("q"), "BYTES", HUGE),
            claimed(grpc, "DOCUMENT_TEXT", text("d"), "BYTES", HUGE),
        ],
        ("SCORE", 1),
    ),
}


@pytest.mark.parametrize("case", sorted(ENSEMBLE_CASES))
def test_through_an_ensemble_the_claim_costs_the_one_row_sent(grpc_client, case):
    import tritonclient.grpc as grpc

    inputs, (output, size) = ENSEMBLE_CASES[case]
    started = time.monotonic()
    result = grpc_client.infer(case.split("/")[0], inputs(grpc), client_timeout=60)
    assert time.monotonic() - started < REFUSED_WITHIN_S
    assert result.as_numpy(output).size == size  # the one row sent, nothing allocated for 2^40


def test_the_server_answers_normally_after_the_huge_batches(grpc_client):
    import tritonclient.grpc as grpc

    result = grpc_client.infer("qwen3_vl_embedding_model", wire(grpc, None), client_timeout=60)
    assert result.as_numpy("EMBEDDING").shape == (1, 128)
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
