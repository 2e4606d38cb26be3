"""The backend's preprocess + model, in process, against the official pipeline (tests/reference.py)."""

import numpy as np
import pytest

from backend.embedding.model import EmbeddingModel
from backend.embedding.preprocess import EmbeddingPreprocessor
from backend.protocol import EmbeddingItem
from backend.settings import ModelSettings, PreprocessSettings
from backend.wire import pack_rows, unpack_rows
from tests.reference import OfficialEmbedder
from tools import synthetic


@pytest.fixture(scope="module")
def pipeline(tiny_model_path):
    preprocessor = EmbeddingPreprocessor(PreprocessSettings(model_path=str(tiny_model_path)))
    model = EmbeddingModel(ModelSettings(model_path=str(tiny_model_path), device="cpu", dtype="float32"))
    return preprocessor, model


@pytest.fixture(scope="module")
def official(tiny_model_path):
    return OfficialEmbedder(tiny_model_path)


PHOTO = synthetic.encode_image(synthetic.photo(448, 448, seed=1))
SCREEN = synthetic.encode_image(synthetic.screenshot(1280, 720, seed=2))
RGBA = synthetic.encode_image(synthetic.photo(300, 200, seed=3).convert("RGBA"))
CLIP = synthetic.video(seconds=4, fps=12, width=320, height=240, kind="mp4", seed=4)
GIF = synthetic.video(seconds=3, fps=8, width=160, height=120, kind="gif", seed=5)

CASES = {
    "text": {"text": "A woman playing with her dog on a beach at sunset."},
    "query": {
        "text": "What is the capital of China?",
        "instruction": "Given a web search query, retrieve relevant passages",
    },
    "image": {"images": [PHOTO]},
    "screenshot_with_text": {"text": "quarterly dashboard", "images": [SCREEN]},
    "two_images_rgba": {"images": [PHOTO, RGBA], "text": "compare"},
    "video": {"videos": [CLIP]},
    "gif_video_image_text": {
        "videos": [GIF],
        "images": [PHOTO],
        "text": "all at once",
        "instruction": "Find it!",
    },
    "matryoshka": {"text": "short", "dimensions": 64},
}


def ours(pipeline, cases):
    preprocessor, model = pipeline
    prepared = []
    for case in cases:
        item = EmbeddingItem(
            text=case.get("text"),
            images=tuple(case.get("images", ())),
            videos=tuple(case.get("videos", ())),
            instruction=case.get("instruction"),
            dimensions=case.get("dimensions", 0),
        )
        prepared.append(preprocessor.prepare(item))
    # Through the same tensors the server passes between the two steps.
    rows = unpack_rows(pack_rows(prepared, preprocessor.tokenizer.pad_token_id))
    return model.embed(rows)


@pytest.mark.parametrize("name", list(CASES))
def test_each_modality_matches_the_official_pipeline(pipeline, official, name):
    [expected] = official.embed([CASES[name]])
    [got] = ours(pipeline, [CASES[name]])
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-5


def test_a_mixed_batch_matches_one_by_one(pipeline, official):
    cases = list(CASES.values())
    batched = ours(pipeline, cases)
    for case, got in zip(cases, batched):
        [expected] = official.embed([case])
        assert np.abs(got - expected).max() <= 1e-5


def test_text_rows_of_different_lengths_batched_together_match(pipeline, official):
    cases = [{"text": "short"}, {"text": "a somewhat longer sentence " * 5}, {"text": "mid length text " * 2}]
    preprocessor, model = pipeline
    rows = [preprocessor.prepare(EmbeddingItem(text=case["text"])) for case in cases]
    assert len({row.length for row in rows}) == 3
    from backend.runtime.batching import plan_micro_batches

    assert len(plan_micro_batches([row.length for row in rows], [0, 0, 0], model.limits)) == 1
    vectors = model.run(rows)  # one right-padded micro-batch
    for case, got in zip(cases, vectors):
        [expected] = official.embed([case])
        assert np.abs(got - expected).max() <= 1e-5


def test_token_ids_match_the_official_processor(pipeline, official):
    preprocessor, _ = pipeline
    case = CASES["gif_video_image_text"]
    item = EmbeddingItem(
        text=case["text"],
        images=tuple(case["images"]),
        videos=tuple(case["videos"]),
        instruction=case["instruction"],
    )
    ids = preprocessor.prepare(item).input_ids
    from transformers.video_utils import VideoMetadata

    from tests.reference import conversation, fetch_image, fetch_video

    text = official.processor.apply_chat_template(
        [conversation(case["text"], case["images"], case["videos"], case["instruction"])],
        add_generation_prompt=True,
        tokenize=False,
    )
    video, meta = fetch_video(case["videos"][0])
    expected = official.processor(
        text=text,
        images=[fetch_image(case["images"][0])],
        videos=[video],
        video_metadata=[VideoMetadata(**meta)],
        do_resize=False,
        return_tensors="np",
    )["input_ids"][0]
    assert ids.tolist() == expected.tolist()


def test_overlong_text_is_truncated_like_the_official_code(pipeline, official):
    preprocessor, _ = pipeline
    text = "lorem ipsum dolor " * 200
    item = EmbeddingItem(text=text)
    capped = EmbeddingPreprocessor(
        PreprocessSettings(model_path=preprocessor.settings.model_path, max_length=64)
    )
    assert capped.prepare(item).length == 64
    [expected] = official.embed([{"text": text}], max_length=64)
    rows = [capped.prepare(item)]
    [got] = pipeline[1].embed(rows)
    assert np.abs(got - expected).max() <= 1e-5
