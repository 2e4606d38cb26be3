"""Absurd batch dimensions on the direct Triton path (issue 19, item 5): Triton 2.51 keeps a request's batch
dimension modulo 2^32, so a claimed 2^40 rows reaches a step as a batch of 0, its tensors without their
batch dimension. Every step refuses such a request as INVALID_ARG naming the input, before reading a row."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from backend.errors import InputError
from backend.protocol import PUBLIC_INPUT_RANK, parse_items, parse_pairs
from backend.wire import RANKS, unpack_rows
from tests.conftest import REPO


def text(*values: str, rank: int = 2) -> np.ndarray:
    array = np.array([[value.encode()] for value in values], dtype=object)
    return array.reshape(-1) if rank == 1 else array


def test_a_public_input_without_its_batch_dimension_is_refused_naming_it():
    started = time.perf_counter()
    with pytest.raises(InputError) as caught:
        parse_items({"TEXT": text("hello", rank=1), "IMAGE": None})
    assert time.perf_counter() - started < 0.01
    message = str(caught.value)
    assert message.startswith("TEXT: expected 2 dimensions, the batch dimension first, got shape [1]")
    assert "2^32" in message


def test_a_reranker_input_without_its_batch_dimension_is_refused():
    with pytest.raises(InputError, match=r"^DOCUMENT_TEXT: expected 2 dimensions"):
        parse_pairs({"QUERY_TEXT": text("q"), "DOCUMENT_TEXT": text("d", rank=1)})


def test_a_request_of_zero_rows_is_refused():
    with pytest.raises(InputError, match=r"^request has no rows \(batch size 0\)$"):
        parse_items({"TEXT": np.zeros((0, 1), dtype=object)})


def test_a_token_id_tensor_of_the_wrong_rank_is_refused_before_any_id_is_read():
    # 2^40 ids would be 8 TiB: only the shape is looked at, and a view claims none of it.
    huge = np.lib.stride_tricks.as_strided(np.zeros(1, np.int64), shape=(2**40,), strides=(0,))
    with pytest.raises(InputError, match=r"^TOKEN_IDS: expected 2 dimensions.*got shape \[1099511627776\]"):
        parse_items({"TOKEN_IDS": huge, "RAW": np.array([[True]])})


def wire(batch: int = 1, length: int = 3) -> dict[str, np.ndarray | None]:
    return {
        "INPUT_IDS": np.ones((batch, length), np.int64),
        "SEQ_LEN": np.full((batch, 1), length, np.int64),
        "EMBED_DIM": np.zeros((batch, 1), np.int32),
        "IMAGE_PATCHES": None,
        "IMAGE_GRID_THW": None,
        "VIDEO_PATCHES": None,
        "VIDEO_GRID_THW": None,
        "QUEUED_AT": None,
    }


@pytest.mark.parametrize("name", ["INPUT_IDS", "SEQ_LEN", "EMBED_DIM"])
def test_a_model_step_tensor_without_its_batch_dimension_is_an_input_error(name):
    tensors = wire()
    tensors[name] = tensors[name].reshape(-1)  # what a batch of 2^40 (0 modulo 2^32) arrives as
    with pytest.raises(InputError, match=rf"^{name}: expected 2 dimensions"):
        unpack_rows(tensors)


def test_model_step_vision_tensors_of_the_wrong_rank_are_input_errors():
    tensors = wire()
    tensors["IMAGE_PATCHES"] = np.zeros((4, 1536), np.uint8)
    tensors["IMAGE_GRID_THW"] = np.array([[1, 2, 2]], np.int64)
    with pytest.raises(InputError, match=r"^IMAGE_PATCHES: expected 3 dimensions"):
        unpack_rows(tensors)


def test_model_step_tensors_that_disagree_on_the_batch_are_input_errors():
    tensors = wire(batch=3)
    tensors["EMBED_DIM"] = np.zeros((1, 1), np.int32)  # was an IndexError (INTERNAL) at row 1
    with pytest.raises(InputError, match=r"^inputs disagree on the batch size"):
        unpack_rows(tensors)


def config_ranks() -> dict[str, dict[str, int]]:
    """model -> input -> rank with the batch dimension, from model_repository/*/config.pbtxt."""
    found: dict[str, dict[str, int]] = {}
    for config in sorted((REPO / "model_repository").glob("*/config.pbtxt")):
        lines = config.read_text().splitlines()
        text_ = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
        section = text_.split("input [", 1)[1].split("\noutput [", 1)[0]
        found[config.parent.name] = {
            name: len(dims.split(",")) + 1
            for name, dims in re.findall(r'name: "(\w+)"[^}]*?dims: \[([^\]]*)\]', section)
        }
    return found


def test_the_ranks_are_the_configs_dims_plus_the_batch_dimension():
    ranks = config_ranks()
    for model, inputs in ranks.items():
        if model.endswith("_model"):
            assert inputs == {name: RANKS[name] for name in inputs}, model
        else:  # the ensembles and the preprocess steps take the public inputs
            assert set(inputs.values()) == {PUBLIC_INPUT_RANK}, model
