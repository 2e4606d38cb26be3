"""The request contract: torch-free preprocessing, one error grammar the client parses, configs that agree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend import protocol
from backend.embedding.preprocess import EmbeddingPreprocessor
from backend.errors import InputError
from backend.protocol import EmbeddingItem, parse_items
from backend.reranking.preprocess import RerankPreprocessor
from backend.settings import PreprocessSettings, RerankPreprocessSettings
from tests.drivers import row_of_message
from tools import synthetic

REPO = Path(__file__).resolve().parents[2]
REPOSITORY = REPO / "model_repository"


def test_the_preprocess_steps_never_import_torch(tiny_model_path, tiny_reranker_path):
    """What the preprocess stubs import and run (text, image and video) leaves torch and transformers out."""
    script = f"""
import sys
from backend import metrics, steps, triton_io
from backend.embedding.preprocess import EmbeddingPreprocessor
from backend.reranking.preprocess import RerankPreprocessor
from backend.protocol import EmbeddingItem, PairSide, RerankPair
from backend.settings import PreprocessSettings, RerankPreprocessSettings
from tools import synthetic

embedder = EmbeddingPreprocessor(PreprocessSettings(model_path={str(tiny_model_path)!r}))
reranker = RerankPreprocessor(RerankPreprocessSettings(model_path={str(tiny_reranker_path)!r}))
photo = synthetic.encode_image(synthetic.photo(64, 48))
clip = synthetic.video(seconds=2, fps=4, width=64, height=48)
embedder.prepare(EmbeddingItem(text="hi", images=(photo,), videos=(clip,)))
embedder.prepare(EmbeddingItem(text="hi", raw=True))
reranker.prepare(RerankPair(PairSide(text="q"), PairSide(images=(photo,), videos=(clip,))))
print(sorted(name for name in ("torch", "transformers") if name in sys.modules))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stderr[-2000:]


def test_prompt_token_ids_equal_the_transformers_tokenizer(tiny_model_path, tiny_tokenizer):
    from backend.text.tokenization import PromptTokenizer

    ours = PromptTokenizer(str(tiny_model_path))
    texts = [
        "Hello, world!",
        "<|im_start|>system\nX<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>é<|im_end|>",
        "  x  \n\n y\té e\u0301 你好 😀 I'LL don't",
        "",
    ]
    for text in texts:
        assert ours.ids(text).tolist() == tiny_tokenizer(text)["input_ids"], text
    assert ours.special_ids == set(tiny_tokenizer.all_special_ids)
    assert ours.pad_token_id == tiny_tokenizer.pad_token_id


@pytest.fixture(scope="module")
def embedder(tiny_model_path):
    return EmbeddingPreprocessor(PreprocessSettings(model_path=str(tiny_model_path)))


@pytest.fixture(scope="module")
def reranker(tiny_reranker_path):
    return RerankPreprocessor(RerankPreprocessSettings(model_path=str(tiny_reranker_path)))


def _bytes(values) -> np.ndarray:
    return np.array(values, dtype=object)


PHOTO = synthetic.encode_image(synthetic.photo(64, 48))
GOOD = {"TEXT": b"fine"}
# One bad row after three good ones, for each way the embedding preprocess step rejects input.
BAD_EMBEDDING_ROWS = {
    "no content": {"TEXT": b""},
    "non-UTF-8 text": {"TEXT": b"\xff"},
    "non-UTF-8 instruction": {"TEXT": b"x", "INSTRUCTION": b"\xfe"},
    "bad image": {"IMAGE": b"junk"},
    "bad video": {"VIDEO": b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 100},
    "dimensions": {"TEXT": b"x", "DIMENSIONS": 32},
    "text over max_text_bytes": {"TEXT": b"x" * (1024 * 1024 + 1)},
    "raw with an image": {"TEXT": b"x", "IMAGE": PHOTO, "RAW": True},
    "raw and too long": {"TEXT": b"word " * 9000, "RAW": True},
}
EMPTY = {"TEXT": b"", "INSTRUCTION": b"", "IMAGE": b"", "VIDEO": b"", "DIMENSIONS": 0, "RAW": False}
DTYPES = {"DIMENSIONS": np.int32, "RAW": bool}


def _request(rows: list[dict]) -> dict[str, np.ndarray]:
    """Public tensors for rows given as {input: value}; inputs a row leaves out are empty there."""
    names = sorted({name for row in rows for name in row})
    return {
        name: np.array([[row.get(name, EMPTY[name])] for row in rows], dtype=DTYPES.get(name, object))
        for name in names
    }


class _ServerError(Exception):
    """What tritonclient raises: a status and the server's message."""

    def __init__(self, message: str):
        super().__init__(message)
        self._message = message

    def status(self) -> str:
        return "StatusCode.INVALID_ARGUMENT"

    def message(self) -> str:
        return self._message


def _client_blames(message: str, rows: int) -> int | None:
    """The input index the client's error handling pins `message` on, in a request of `rows` items that
    stand at input positions 100, 101, ...; None when it blames the whole request."""
    from qwen3vl_client import Item, ItemError
    from qwen3vl_client._retry import blame
    from qwen3vl_client.items import Batch

    batch = Batch(
        [100 + row for row in range(rows)], [Item(text=f"t{row}") for row in range(rows)], [None] * rows
    )
    error = blame(_ServerError(message), batch)
    return error.index if isinstance(error, ItemError) else None


@pytest.mark.parametrize("name", list(BAD_EMBEDDING_ROWS))
def test_every_embedding_error_names_its_row_as_the_client_reads_it(embedder, name):
    request = _request([GOOD, GOOD, GOOD, BAD_EMBEDDING_ROWS[name]])
    with pytest.raises(InputError) as failure:
        embedder.prepare_request(request)
    # Triton puts the ensemble's name before a composing model's message.
    message = f"in ensemble 'qwen3_vl_embedding', {failure.value}"
    assert failure.value.row == 3
    assert row_of_message(message) == 3
    assert _client_blames(message, rows=4) == 103, message


def test_token_id_errors_name_their_row(embedder):
    ids = np.array([[1, 2], [3, 4], [-1, 5]], dtype=np.int64)
    for raw, message in (([True, True, True], "token ids must be in"), ([True, True, False], "set RAW")):
        request = {"TOKEN_IDS": ids, "RAW": np.array([[flag] for flag in raw])}
        with pytest.raises(InputError, match=message) as failure:
            embedder.prepare_request(request)
        assert failure.value.row == 2 and _client_blames(str(failure.value), rows=3) == 102


BAD_PAIRS = {
    "no query": {"QUERY_TEXT": _bytes([[b""]]), "DOCUMENT_TEXT": _bytes([[b"d"]])},
    "bad document image": {
        "QUERY_TEXT": _bytes([[b"q"]]),
        "DOCUMENT_TEXT": _bytes([[b""]]),
        "DOCUMENT_IMAGE": _bytes([[b"junk"]]),
    },
    "non-UTF-8 query": {"QUERY_TEXT": _bytes([[b"\xfe"]]), "DOCUMENT_TEXT": _bytes([[b"d"]])},
}


@pytest.mark.parametrize("name", list(BAD_PAIRS))
def test_every_rerank_error_names_its_row_as_the_client_reads_it(reranker, name):
    bad = BAD_PAIRS[name]
    request = {
        key: np.concatenate([_bytes([[b"fine" if key.endswith("TEXT") else b""]] * 2), value])
        for key, value in bad.items()
    }
    with pytest.raises(InputError) as failure:
        reranker.prepare_request(request)
    message = f"in ensemble 'qwen3_vl_reranker', {failure.value}"
    assert failure.value.row == 2 and row_of_message(message) == 2
    assert _client_blames(message, rows=3) == 102, message


def test_the_error_grammar_is_row_input_message():
    error = InputError("bytes are not a decodable image", input="IMAGE[1]").at_row(4)
    assert str(error) == "row 4: IMAGE[1]: bytes are not a decodable image"
    assert (error.row, error.input, error.detail) == (4, "IMAGE[1]", "bytes are not a decodable image")
    assert str(InputError("request has no inputs")) == "request has no inputs"
    assert row_of_message(str(InputError("x"))) is None
    # A message that mentions a row inside user-visible text still reports the first (the failed) row.
    assert row_of_message("row 2: TEXT: row 7: is not here") == 2


def test_dimensions_are_checked_once_with_one_message():
    assert protocol.check_dimensions(0, 128) == 0 and protocol.check_dimensions(64, 128) == 64
    for bad in (1, 63, 129):
        with pytest.raises(InputError, match=r"^EMBED_DIM: must be between 64 and 128, got "):
            protocol.check_dimensions(bad, 128, "EMBED_DIM")


def test_raw_items_are_the_tokenizers_own_ids(embedder, tiny_tokenizer):
    [item] = parse_items({"TEXT": _bytes([[b"Hello, world!"]]), "RAW": np.array([[True]])})
    assert item.raw and item.text == "Hello, world!"
    prepared = embedder.prepare(item)
    assert prepared.input_ids.tolist() == tiny_tokenizer("Hello, world!")["input_ids"] == [9707, 11, 1879, 0]
    ids = embedder.prepare(EmbeddingItem(token_ids=(1, 2, 3), raw=True)).input_ids
    assert ids.tolist() == [1, 2, 3]
    with pytest.raises(InputError, match="over max_length 8192"):
        embedder.prepare(EmbeddingItem(token_ids=tuple(range(8193)), raw=True))


def _config(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _names(tensors) -> list[str]:
    return [tensor.name for tensor in tensors]


def test_the_configs_carry_the_protocol_names():
    embedding = _config(REPOSITORY / protocol.EMBEDDING_ENSEMBLE / "config.pbtxt")
    reranker = _config(REPOSITORY / protocol.RERANKER_ENSEMBLE / "config.pbtxt")
    assert _names(embedding.input) == [*protocol.EMBEDDING_INPUTS, *protocol.COMPACT_INPUTS]
    assert _names(embedding.output) == [
        protocol.EMBEDDING_OUTPUT,
        protocol.TOKEN_COUNT_OUTPUT,
        *protocol.COMPACT_OUTPUTS.values(),
    ]
    assert _names(reranker.input) == list(protocol.RERANK_INPUTS)
    assert _names(reranker.output) == [protocol.SCORE_OUTPUT, protocol.TOKEN_COUNT_OUTPUT]
    without_dimensions = [name for name in protocol.MODEL_INPUTS if name != "EMBED_DIM"]
    for ensemble, model_inputs in (
        (protocol.EMBEDDING_ENSEMBLE, list(protocol.MODEL_INPUTS)),
        (protocol.RERANKER_ENSEMBLE, without_dimensions),
    ):
        model = _config(REPOSITORY / f"{ensemble}_model" / "config.pbtxt")
        preprocess = _config(REPOSITORY / f"{ensemble}_preprocess" / "config.pbtxt")
        # The embedding model step also takes the compact-vector inputs, straight from the ensemble.
        own = list(protocol.COMPACT_INPUTS) if ensemble == protocol.EMBEDDING_ENSEMBLE else []
        assert _names(model.input) == [*model_inputs, *own]
        assert _names(preprocess.output) == model_inputs


def test_the_two_model_steps_agree_where_they_must():
    """Same parameters, batching and inputs but EMBED_DIM and the compact-vector inputs (the embedding step's
    own); only model_path's default differs (settings)."""
    embedding = _config(REPOSITORY / "qwen3_vl_embedding_model" / "config.pbtxt")
    reranker = _config(REPOSITORY / "qwen3_vl_reranker_model" / "config.pbtxt")
    assert dict(embedding.parameters) == dict(reranker.parameters)
    assert embedding.dynamic_batching == reranker.dynamic_batching
    assert embedding.max_batch_size == reranker.max_batch_size
    assert list(embedding.instance_group) == list(reranker.instance_group)
    rerank_inputs = {tensor.name: tensor for tensor in reranker.input}
    for tensor in embedding.input:
        if tensor.name not in ("EMBED_DIM", *protocol.COMPACT_INPUTS):
            assert rerank_inputs[tensor.name] == tensor
    assert len(rerank_inputs) == len(embedding.input) - 1 - len(protocol.COMPACT_INPUTS)
    embedding_pre = _config(REPOSITORY / "qwen3_vl_embedding_preprocess" / "config.pbtxt")
    reranker_pre = _config(REPOSITORY / "qwen3_vl_reranker_preprocess" / "config.pbtxt")
    shared = set(embedding_pre.parameters) & set(reranker_pre.parameters) - {
        "max_length",
        "default_instruction",
    }
    for key in shared:
        assert embedding_pre.parameters[key] == reranker_pre.parameters[key], key


def test_the_client_restates_the_ensemble_names():
    """qwen3vl_client installs without the backend, so it restates the names; they must not drift."""
    from qwen3vl_client import options

    assert (options.MODEL_NAME, options.RERANKER_MODEL_NAME) == (
        protocol.EMBEDDING_ENSEMBLE,
        protocol.RERANKER_ENSEMBLE,
    )


def test_each_model_step_accepts_what_its_preprocess_step_can_send():
    from backend.settings import (
        RERANK_KEPT_TAIL,
        ModelSettings,
        PreprocessSettings,
        RerankModelSettings,
        RerankPreprocessSettings,
        load_settings,
    )

    for ensemble, preprocess_cls, model_cls, tail in (
        (protocol.EMBEDDING_ENSEMBLE, PreprocessSettings, ModelSettings, 0),
        (protocol.RERANKER_ENSEMBLE, RerankPreprocessSettings, RerankModelSettings, RERANK_KEPT_TAIL),
    ):
        parameters = {}
        for step, cls in (("preprocess", preprocess_cls), ("model", model_cls)):
            config = _config(REPOSITORY / f"{ensemble}_{step}" / "config.pbtxt")
            values = {key: value.string_value for key, value in config.parameters.items()}
            parameters[step] = load_settings(cls, values, environ={})
        assert parameters["model"].max_length == parameters["preprocess"].max_length + tail, ensemble
