"""The model steps' instance count a server is started with (tools.repository), without starting one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tools.device_probe import CPU_PLATFORM
from tools.preflight import probe_device
from tools.repository import (
    CPU_MODEL_INSTANCES,
    cpu_model_instances,
    instance_count,
    parse_model_instances,
    plan_model_instances,
    set_instance_count,
    with_model_instances,
)

REPOSITORY = REPO / "model_repository"
EMBEDDING_STEP = "qwen3_vl_embedding_model"
RERANKER_STEP = "qwen3_vl_reranker_model"
PYTHON = Path(sys.executable)
GIB = 2**30


def _counts(repository: Path) -> dict[str, int]:
    """The instance count of each model with an instance group (the ensembles have none)."""
    configs = {path.parent.name: path.read_text() for path in sorted(repository.glob("*/config.pbtxt"))}
    return {name: instance_count(text) for name, text in configs.items() if "instance_group" in text}


def test_the_count_of_the_single_instance_group_is_read_and_replaced():
    config = 'name: "m"\ninstance_group [ { count: 1, kind: KIND_CPU } ]\n'
    assert instance_count(config) == 1
    assert instance_count(set_instance_count(config, 3)) == 3
    assert set_instance_count(config, 3).replace("3", "1") == config
    with pytest.raises(ValueError, match="found 0"):
        set_instance_count('name: "m"\n', 2)


@pytest.mark.parametrize(
    ("value", "count"), [(None, 0), ("", 0), ("auto", 0), (" AUTO ", 0), ("0", 0), ("3", 3)]
)
def test_model_instances_is_a_number_or_auto(value, count):
    assert parse_model_instances(value) == count


@pytest.mark.parametrize("value", ["two", "-1", "1.5"])
def test_a_model_instances_that_is_no_count_is_refused(value):
    with pytest.raises(ValueError, match="MODEL_INSTANCES=.*a number of instances, or auto"):
        parse_model_instances(value)


def test_two_cpu_instances_only_with_two_cores_and_room_for_the_weights():
    assert cpu_model_instances(2, [GIB // 4], 16 * GIB)[0] == CPU_MODEL_INSTANCES
    assert cpu_model_instances(1, [GIB // 4], 16 * GIB) == (1, "1 core(s)")
    assert cpu_model_instances(2, [GIB // 4, None], 16 * GIB) == (1, "a checkpoint's size is unknown")
    # An 8B pair in bfloat16 (2 x 16 GiB of files): float32 copies for two instances need 128 GiB.
    count, why = cpu_model_instances(16, [16 * GIB, 16 * GIB], 200 * GIB)
    assert (count, why) == (1, "2 copies of the weights would take 128.0 GiB of the 200.0 GiB available")
    assert cpu_model_instances(16, [16 * GIB, 16 * GIB], 256 * GIB)[0] == CPU_MODEL_INSTANCES


def _checkpoint(path: Path, weight_bytes: int) -> Path:
    path.mkdir()
    (path / "model.safetensors").write_bytes(b"\0" * weight_bytes)
    (path / "config.json").write_text("{}")
    return path


def test_auto_plans_the_cpu_count_for_model_steps_on_the_cpu(tmp_path):
    environ = {
        "MODEL_PATH": str(_checkpoint(tmp_path / "embedding", 1000)),
        "RERANKER_MODEL_PATH": str(_checkpoint(tmp_path / "reranker", 1000)),
    }
    plan = plan_model_instances(REPOSITORY, 0, PYTHON, environ=environ, cores=2, available=16 * GIB)
    assert plan.count == CPU_MODEL_INSTANCES
    assert plan.reason.startswith("CPU only, 2 cores")
    # The weights of every model step served count; of the embedding pipeline alone, the reranker's do not.
    big = {**environ, "RERANKER_MODEL_PATH": str(_checkpoint(tmp_path / "big", 5 * 2**20))}
    assert plan_model_instances(REPOSITORY, 0, PYTHON, environ=big, cores=2, available=20 * 2**20).count == 1
    only_embedding = plan_model_instances(
        REPOSITORY, 0, PYTHON, ["qwen3_vl_embedding"], environ=big, cores=2, available=20 * 2**20
    )
    assert only_embedding.count == CPU_MODEL_INSTANCES


def test_a_number_is_taken_and_an_accelerator_keeps_the_repositorys_count(tmp_path):
    assert plan_model_instances(REPOSITORY, 3, PYTHON, environ={}).count == 3
    plan = plan_model_instances(
        REPOSITORY, 0, PYTHON, environ={"DEVICE": "cuda"}, cores=2, available=16 * GIB
    )
    assert plan.count is None
    assert "accelerator" in plan.reason


def test_auto_resolves_to_the_cpu_as_a_model_instance_would_without_importing_torch():
    assert probe_device(PYTHON, "cpu")["platform"] == CPU_PLATFORM
    answer = probe_device(PYTHON, "auto")
    if not answer["cuda_build"]:
        assert answer["platform"] == CPU_PLATFORM


def test_a_copy_changes_only_the_model_steps_of_the_models_served(tmp_path):
    before = _counts(REPOSITORY)
    assert with_model_instances(REPOSITORY, tmp_path / "same", before[EMBEDDING_STEP]) == REPOSITORY
    assert not (tmp_path / "same").exists()
    copy = with_model_instances(REPOSITORY, tmp_path / "copy", 2, ["qwen3_vl_embedding"])
    assert copy == tmp_path / "copy"
    assert _counts(copy) == {**before, EMBEDDING_STEP: 2}
    assert _counts(REPOSITORY) == before
    assert (copy / EMBEDDING_STEP / "1" / "model.py").read_text() == (
        REPOSITORY / EMBEDDING_STEP / "1" / "model.py"
    ).read_text()
    again = with_model_instances(REPOSITORY, tmp_path / "copy", 3)
    assert _counts(again) == {**before, EMBEDDING_STEP: 3, RERANKER_STEP: 3}
