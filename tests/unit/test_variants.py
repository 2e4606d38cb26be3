"""perf.lib.variants: config.pbtxt edited as Triton's ModelConfig protobuf; every edit changes exactly its
field and fails loudly when the field is not there (a text replace would silently leave the copy
unchanged)."""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from perf.lib.paths import MODEL_REPOSITORY
from perf.lib.pipelines import ENSEMBLE, MODEL_STEP, PREPROCESS, RERANKER
from perf.lib.variants import (
    ConfigEditError,
    ModelConfig,
    compose,
    read_config,
    variant_repository,
    with_instance_count,
    with_max_batch_size,
    with_parameter,
    without_dynamic_batching,
)


def config_of(name: str) -> ModelConfig:
    return read_config(MODEL_REPOSITORY / name / "config.pbtxt")


def test_every_shipped_config_parses_as_a_model_config():
    for path in sorted(MODEL_REPOSITORY.glob("*/config.pbtxt")):
        config = read_config(path)
        assert config.name == path.parent.name


def test_each_edit_changes_its_field_and_nothing_else():
    real = config_of(MODEL_STEP)
    edited = ModelConfig()
    edited.CopyFrom(real)
    compose(
        with_parameter("token_budget", "1234"),
        with_max_batch_size(7),
        with_instance_count(3),
        without_dynamic_batching,
    )(edited)
    assert edited.parameters["token_budget"].string_value == "1234"
    assert edited.max_batch_size == 7 and edited.instance_group[0].count == 3
    assert not edited.HasField("dynamic_batching")
    # Put back what the edits changed: the rest is untouched.
    edited.parameters["token_budget"].string_value = real.parameters["token_budget"].string_value
    edited.max_batch_size = real.max_batch_size
    edited.instance_group[0].count = real.instance_group[0].count
    edited.dynamic_batching.CopyFrom(real.dynamic_batching)
    assert edited == real


@pytest.mark.parametrize(
    ("model", "edit", "message"),
    [
        (ENSEMBLE, without_dynamic_batching, "no dynamic_batching"),
        (MODEL_STEP, with_parameter("no_such_parameter", "1"), "no parameter 'no_such_parameter'"),
        (ENSEMBLE, with_instance_count(2), "expected one instance_group, found 0"),
    ],
)
def test_an_edit_whose_field_is_missing_fails_loudly(model, edit, message):
    with pytest.raises(ConfigEditError, match=message):
        edit(config_of(model))


def test_max_batch_size_is_not_set_on_a_model_that_does_not_batch():
    config = config_of(MODEL_STEP)
    config.max_batch_size = 0
    with pytest.raises(ConfigEditError, match="max_batch_size is not set"):
        with_max_batch_size(8)(config)


def test_variant_copies_parse_back_to_the_edited_config_whatever_the_text_layout(tmp_path):
    # The same config in another layout (one line, no comments, other spacing): a text replace keyed on the
    # original spelling would find nothing; the parsed config is the same.
    source = tmp_path / "source"
    for name in (ENSEMBLE, PREPROCESS, MODEL_STEP):
        (source / name).mkdir(parents=True)
        (source / name / "config.pbtxt").write_text(
            text_format.MessageToString(config_of(name), as_one_line=True)
        )
    copy = variant_repository(
        tmp_path / "copy", {MODEL_STEP: with_parameter("batch_overhead_tokens", "64")}, source=source
    )
    written = read_config(copy / MODEL_STEP / "config.pbtxt")
    expected = config_of(MODEL_STEP)
    expected.parameters["batch_overhead_tokens"].string_value = "64"
    assert written == expected
    assert read_config(copy / PREPROCESS / "config.pbtxt") == config_of(PREPROCESS)
    assert (copy / MODEL_STEP / "config.pbtxt").read_text().startswith("# perf variant of ")


def test_variant_repository_copies_the_chosen_models_and_refuses_edits_for_others(tmp_path):
    copy = variant_repository(
        tmp_path / "reranker", {RERANKER.model_step: without_dynamic_batching}, RERANKER.models
    )
    assert sorted(path.name for path in copy.iterdir()) == sorted(RERANKER.models)
    assert (copy / RERANKER.model_step / "1" / "model.py").exists()
    assert not read_config(copy / RERANKER.model_step / "config.pbtxt").HasField("dynamic_batching")
    with pytest.raises(ConfigEditError, match="not in the copy"):
        variant_repository(tmp_path / "wrong", {RERANKER.model_step: without_dynamic_batching})


def test_a_field_triton_does_not_know_fails_the_parse(tmp_path):
    path = tmp_path / "config.pbtxt"
    path.write_text('name: "x"\nmax_batch_sise: 4\n')
    with pytest.raises(text_format.ParseError, match="max_batch_sise"):
        read_config(path)
