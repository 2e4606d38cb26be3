"""perf/lib/workloads.py: deterministic perf_analyzer input files; text_200 is exactly 200 tokens of the
model's tokenizer, as `vllm bench serve --random-input 200` sends."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from perf.lib import workloads


@pytest.fixture(scope="module")
def gen(tiny_model_path):
    return workloads.Generator(tiny_model_path)


def entries(path):
    return json.loads(path.read_text())["data"]


def test_text_200_is_exactly_200_tokens_of_the_model_tokenizer(gen, tiny_tokenizer, tmp_path):
    path = workloads.generate("text_200", tmp_path, rows=40, gen=gen)
    data = entries(path)
    assert len(data) == 40
    texts = [entry["TEXT"]["content"][0] for entry in data]
    assert all(entry["TEXT"]["shape"] == [1] for entry in data)
    assert [len(tiny_tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts] == [200] * 40
    assert len(set(texts)) == 40
    assert "INSTRUCTION" not in data[0]  # documents: the default instruction


def test_rerank_200_pairs_are_exactly_100_plus_100_tokens_and_deterministic(gen, tiny_tokenizer, tmp_path):
    workload = workloads.WORKLOADS["rerank_200"]
    assert workload.model == "qwen3_vl_reranker"  # perf/run.py sends it to the reranker ensemble
    assert workloads.WORKLOADS["text_200"].model == "qwen3_vl_embedding"
    first = workloads.generate("rerank_200", tmp_path / "a", rows=20, gen=gen)
    second = workloads.generate("rerank_200", tmp_path / "b", rows=20, gen=gen)
    assert first.read_bytes() == second.read_bytes()
    data = entries(first)
    assert len(data) == 20
    for entry in data:
        assert set(entry) == {"QUERY_TEXT", "DOCUMENT_TEXT"}  # no INSTRUCTION: the default one
        assert entry["QUERY_TEXT"]["shape"] == entry["DOCUMENT_TEXT"]["shape"] == [1]
    for name in ("QUERY_TEXT", "DOCUMENT_TEXT"):
        texts = [entry[name]["content"][0] for entry in data]
        counts = [len(tiny_tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
        assert counts == [100] * 20
        assert len(set(texts)) == 20
    assert data[0]["QUERY_TEXT"] != data[0]["DOCUMENT_TEXT"]
    manifest = json.loads(first.with_suffix(".manifest.json").read_text())
    assert manifest["text_tokens"] == {"min": 100, "median": 100.0, "max": 100}


def test_files_are_deterministic_and_reused(gen, tmp_path):
    first = workloads.generate("text_mixed", tmp_path / "a", rows=30, gen=gen)
    second = workloads.generate("text_mixed", tmp_path / "b", rows=30, gen=gen)
    assert first.read_bytes() == second.read_bytes()
    assert first.name == "text_mixed-30.json"  # a non-standard row count never replaces the sweep's file
    stamp = first.stat().st_mtime_ns
    assert workloads.generate("text_mixed", tmp_path / "a", rows=30, gen=gen).stat().st_mtime_ns == stamp


def test_text_mixed_has_long_tailed_lengths_and_instructed_queries(gen, tmp_path):
    data = entries(workloads.generate("text_mixed", tmp_path, rows=120, gen=gen))
    lengths = [gen.count_tokens(entry["TEXT"]["content"][0]) for entry in data]
    assert min(lengths) >= 8 and max(lengths) <= 2048
    assert np.percentile(lengths, 95) > 3 * np.median(lengths)  # long tail
    queries = [entry for entry in data if entry["INSTRUCTION"]["content"][0]]
    assert 0.15 < len(queries) / len(data) < 0.45
    assert all(entry["INSTRUCTION"]["content"][0] in workloads.QUERY_TASKS for entry in queries)


def test_exact_length_text_settles_for_any_length(gen):
    rng = np.random.default_rng(1)
    for length in (1, 8, 57, 512):
        assert gen.count_tokens(gen.exact_length_text(rng, length)) == length
        assert gen.count_tokens(gen.exact_length_text(rng, length, gen.word_ids)) == length


def test_media_workloads_carry_decodable_files(tmp_path):
    photo = entries(workloads.generate("image_448", tmp_path, rows=2))[0]
    image = Image.open(io.BytesIO(workloads.decode_bytes_tensor(photo["IMAGE"])))
    assert image.size == (448, 448) and image.format == "JPEG"
    assert photo["TEXT"]["content"][0]
    page = entries(workloads.generate("screenshot", tmp_path, rows=1))[0]
    assert Image.open(io.BytesIO(workloads.decode_bytes_tensor(page["IMAGE"]))).size == (1280, 720)


def test_video_workload_is_an_8_second_h264_clip(tmp_path):
    import av

    clip = entries(workloads.generate("video", tmp_path, rows=1))[0]
    with av.open(io.BytesIO(workloads.decode_bytes_tensor(clip["VIDEO"]))) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.codec_context.width, stream.codec_context.height) == (320, 240)
        assert stream.average_rate == 24
        frames = sum(1 for _ in container.decode(stream))
    assert frames == 8 * 24


def test_mixed_rows_have_text_and_an_image_or_an_empty_element(gen, tmp_path):
    data = entries(workloads.generate("mixed", tmp_path, rows=6, gen=gen))
    sizes = [len(workloads.decode_bytes_tensor(entry["IMAGE"])) for entry in data]
    assert sizes[0] == 0 and sizes[3] == 0  # text-only rows
    assert all(size > 1000 for index, size in enumerate(sizes) if index % 3)
    assert all(entry["TEXT"]["content"][0] for entry in data)


def test_comparison_variants_edit_a_copy_of_the_repository(tmp_path):
    """The batching-off and accelerator variants change exactly what they say, in a copy."""
    from perf import accel
    from perf.lib.paths import MODEL_REPOSITORY
    from perf.lib.pipelines import EMBEDDING_MODELS, MODEL_STEP, PREPROCESS
    from perf.lib.variants import read_config, variant_repository, without_dynamic_batching

    real_text = (MODEL_REPOSITORY / MODEL_STEP / "config.pbtxt").read_text()
    real = read_config(MODEL_REPOSITORY / MODEL_STEP / "config.pbtxt")
    off = variant_repository(tmp_path / "off", {MODEL_STEP: without_dynamic_batching})
    edited = read_config(off / MODEL_STEP / "config.pbtxt")
    assert real.HasField("dynamic_batching") and not edited.HasField("dynamic_batching")
    assert edited.max_batch_size == real.max_batch_size > 0  # still a batching model: the ensemble accepts it
    edited.dynamic_batching.CopyFrom(real.dynamic_batching)
    assert edited == real  # nothing else changed
    assert sorted(path.name for path in off.iterdir()) == sorted(EMBEDDING_MODELS)
    assert (MODEL_REPOSITORY / MODEL_STEP / "config.pbtxt").read_text() == real_text

    big = accel.serving_repository(
        tmp_path / "accel", max_rows=256, token_budget=65536, preprocess_instances=4, model_instances=2
    )
    model_config = read_config(big / MODEL_STEP / "config.pbtxt")
    assert model_config.max_batch_size == 256
    assert model_config.parameters["max_rows_per_batch"].string_value == "256"
    assert model_config.parameters["token_budget"].string_value == "65536"
    assert [group.count for group in model_config.instance_group] == [2]
    preprocess = read_config(big / PREPROCESS / "config.pbtxt")
    assert [group.count for group in preprocess.instance_group] == [4]
    real_preprocess = read_config(MODEL_REPOSITORY / PREPROCESS / "config.pbtxt")
    assert preprocess.parameters == real_preprocess.parameters


def test_prometheus_text_and_statistics_deltas():
    from perf.lib.pipelines import MODEL_STEP, PREPROCESS, RERANKER
    from perf.lib.server_stats import Snapshot, custom_delta, parse_prometheus, stats_delta

    m, p = MODEL_STEP, PREPROCESS
    before = Snapshot(metrics=parse_prometheus(f'qwen3vl_rows_total{{model="{m}"}} 2\n'), time=0.0)
    after_text = (
        "# TYPE qwen3vl_rows_total counter\n"
        f'qwen3vl_rows_total{{model="{m}"}} 10\n'
        f'qwen3vl_tokens_total{{model="{m}"}} 800\n'
        f'qwen3vl_padded_tokens_total{{model="{m}"}} 880\n'
        f'qwen3vl_rows_per_execute_bucket{{model="{m}",le="1"}} 2\n'
        f'qwen3vl_rows_per_execute_bucket{{model="{m}",le="4"}} 4\n'
        f'qwen3vl_rows_per_execute_bucket{{model="{m}",le="+Inf"}} 4\n'
        f'qwen3vl_preprocess_seconds_total{{model="{p}",modality="text"}} 0.5\n'
        f'qwen3vl_preprocess_items_total{{model="{p}",modality="text"}} 8\n'
        # Another pipeline's steps (both ensembles loaded): not counted for this one.
        'qwen3vl_rows_total{model="qwen3_vl_reranker_model"} 5\n'
        'qwen3vl_preprocess_items_total{model="qwen3_vl_reranker_preprocess",modality="text"} 5\n'
    )
    stats = {
        MODEL_STEP: {
            "inference_count": 8,
            "execution_count": 4,
            "inference_stats": {
                "success": {"count": 8, "ns": 80_000_000},
                "queue": {"count": 8, "ns": 8_000_000},
            },
            "batch_stats": [
                {"batch_size": 1, "compute_infer": {"count": 2, "ns": 0}},
                {"batch_size": 3, "compute_infer": {"count": 2, "ns": 0}},
            ],
        }
    }
    after = Snapshot(stats, parse_prometheus(after_text), 4.0)
    custom = custom_delta(before, after)
    assert custom.rows == 8 and custom.padded_tokens / custom.tokens == 1.1 and custom.padding_ratio == 1.1
    assert custom.rows_per_execute == {"1": 2, "4": 2}
    assert custom.preprocess_items == {"text": 8} and custom.seconds == 4.0
    delta = stats_delta(Snapshot(), after)[MODEL_STEP]
    assert delta.requests == 8 and delta.executions == 4 and delta.rows_per_execute == 2.0
    assert delta.success_ms == 10.0 and delta.queue_ms == 1.0
    assert delta.batch_sizes == {1: 2, 3: 2} and delta.max_batch == 3
    reranker = custom_delta(before, after, RERANKER)
    assert reranker.rows == 5 and reranker.preprocess_items == {"text": 5}
