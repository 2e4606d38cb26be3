"""Reranker prompt, truncation and scores, in process, against the official reranker (tests/reference.py)."""

import random

import numpy as np
import pytest

from backend.errors import InputError
from backend.protocol import PairSide, RerankPair, parse_pairs
from backend.reranking.model import RerankModel
from backend.reranking.preprocess import RerankPreprocessor
from backend.settings import RerankModelSettings, RerankPreprocessSettings
from backend.text import chat
from backend.text.tokenization import truncate_keeping_special
from backend.wire import pack_rows, unpack_rows
from tests.reference import OfficialReranker, _truncate, rerank_conversation
from tools import synthetic

PHOTO = synthetic.encode_image(synthetic.photo(448, 448, seed=21))
SCREEN = synthetic.encode_image(synthetic.screenshot(1280, 720, seed=22))
CLIP = synthetic.video(seconds=3, fps=8, width=160, height=120, kind="webm", seed=23)

QUERY = {"text": "A dog running on the beach"}
DOCUMENTS = [
    {"text": "A golden retriever sprints along the shoreline at sunset."},
    {"images": [PHOTO]},
    {"images": [SCREEN], "text": "quarterly report"},
    {"videos": [CLIP]},
    {"videos": [CLIP], "images": [PHOTO], "text": "everything"},
]


@pytest.fixture(scope="module")
def preprocessor(tiny_reranker_path):
    return RerankPreprocessor(RerankPreprocessSettings(model_path=str(tiny_reranker_path)))


@pytest.fixture(scope="module")
def model(tiny_reranker_path):
    return RerankModel(RerankModelSettings(model_path=str(tiny_reranker_path), device="cpu", dtype="float32"))


@pytest.fixture(scope="module")
def official(tiny_reranker_path):
    return OfficialReranker(tiny_reranker_path)


def pair(query: dict, document: dict, instruction=None) -> RerankPair:
    def side(values):
        return PairSide(values.get("text"), tuple(values.get("images", ())), tuple(values.get("videos", ())))

    return RerankPair(side(query), side(document), instruction)


def test_prompt_equals_the_official_conversation_through_the_chat_template(tiny_tokenizer):
    conversation = rerank_conversation({"text": "q", "images": [b"x"]}, {"text": "d"}, "Find it")
    rendered = tiny_tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    ours = chat.rerank_prompt("Find it", chat.PromptSide(text="q", image_count=1), chat.PromptSide(text="d"))
    assert rendered == ours
    assert ours.endswith(
        "<Query>:<|vision_start|><|image_pad|><|vision_end|>q\n<Document>:d<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_truncation_keeps_special_tokens_and_the_tail_like_the_official_code():
    rng = random.Random(5)
    special = {7, 8, 9}
    for _ in range(200):
        ids = [rng.choice([1, 2, 3, 4, 5, 7, 8, 9]) for _ in range(rng.randint(6, 60))]
        limit = rng.randint(1, 40)
        expected = _truncate(ids[:-5], limit, special) + ids[-5:]
        assert truncate_keeping_special(np.array(ids), limit, special).tolist() == expected


def ours(preprocessor, model, pairs):
    prepared = [preprocessor.prepare(p) for p in pairs]
    rows = unpack_rows(pack_rows(prepared, preprocessor.tokenizer.pad_token_id, with_dimensions=False))
    return [float(score[0]) for score in model.score(rows)]


@pytest.mark.parametrize("index", range(len(DOCUMENTS)))
def test_each_modality_scores_like_the_official_reranker(preprocessor, model, official, index):
    [expected] = official.score(QUERY, [DOCUMENTS[index]])
    [got] = ours(preprocessor, model, [pair(QUERY, DOCUMENTS[index])])
    assert abs(got - expected) <= 1e-5
    assert 0.0 <= got <= 1.0


def test_batched_scores_equal_one_pair_per_forward(preprocessor, model, official):
    image_query = {"images": [PHOTO], "text": "this picture"}
    pairs = [pair(QUERY, d) for d in DOCUMENTS] + [pair(image_query, d, "Match images") for d in DOCUMENTS]
    batched = ours(preprocessor, model, pairs)
    expected = official.score(QUERY, DOCUMENTS) + official.score(image_query, DOCUMENTS, "Match images")
    singles = [ours(preprocessor, model, [p])[0] for p in pairs]
    assert np.abs(np.array(batched) - np.array(singles)).max() <= 1e-5
    assert np.abs(np.array(batched) - np.array(expected)).max() <= 1e-5


@pytest.mark.parametrize("with_image", [False, True])
def test_long_pairs_are_truncated_like_the_official_reranker(
    tiny_reranker_path, preprocessor, model, official, with_image
):
    short = RerankPreprocessor(RerankPreprocessSettings(model_path=str(tiny_reranker_path), max_length=80))
    document = {"text": "lorem ipsum " * 100, **({"images": [PHOTO]} if with_image else {})}
    full = preprocessor.prepare(pair(QUERY, document))
    cut = short.prepare(pair(QUERY, document))
    assert cut.length < full.length
    assert cut.input_ids[-5:].tolist() == full.input_ids[-5:].tolist()  # the assistant prompt survives
    if not with_image:
        assert cut.length == 80 + 5
    [expected] = official.score(QUERY, [document], max_length=80)
    [got] = model.score([cut])
    assert abs(float(got[0]) - expected) <= 1e-5


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"QUERY_TEXT": [[b""]], "DOCUMENT_TEXT": [[b"d"]]}, "query has no content"),
        ({"QUERY_TEXT": [[b"q"]]}, "document has no content"),
        ({"QUERY_TEXT": [[b"q"]], "DOCUMENT_TEXT": [[b"\xff"]]}, "DOCUMENT_TEXT: not valid UTF-8"),
        ({"QUERY_TEXT": [[b"q"]], "DOCUMENT_IMAGE": [[b"junk"]]}, "DOCUMENT_IMAGE[0]"),
    ],
)
def test_bad_pairs_are_input_errors(preprocessor, inputs, message):
    tensors = {name: np.array(value, dtype=object) for name, value in inputs.items()}
    with pytest.raises(InputError) as error:
        for p in parse_pairs(tensors):
            preprocessor.prepare(p)
    assert message in str(error.value)


def test_an_untied_lm_head_is_read_from_the_checkpoint(tiny_reranker_path, tmp_path):
    import shutil

    import torch
    from transformers import Qwen3VLForConditionalGeneration

    from tools.checkpoint import make_config

    config = make_config("tiny")
    config.tie_word_embeddings = False
    config.text_config.tie_word_embeddings = False
    torch.manual_seed(3)
    untied = Qwen3VLForConditionalGeneration(config).eval()
    untied.save_pretrained(tmp_path)
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.json",
        "merges.txt",
    ):
        shutil.copy(tiny_reranker_path / name, tmp_path / name)
    model = RerankModel(
        RerankModelSettings(model_path=str(tmp_path), device="cpu", dtype="float32", warmup=False)
    )
    head = untied.lm_head.weight.detach()
    assert not torch.equal(head, untied.model.language_model.embed_tokens.weight)
    assert torch.equal(model.score_direction, head[9693] - head[2152])  # "yes" - "no"
