"""Variant model repositories: a copy of the project's models with some config.pbtxt files changed (no
dynamic batching, another parameter value, more instances), for comparisons and accelerator runs.

A config is parsed into Triton's `ModelConfig` protobuf (the one tritonclient ships) and edited field by
field; an edit whose field is missing raises instead of leaving the copy unchanged. The real repository is
never touched.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc.model_config_pb2 import ModelConfig

from perf.lib.paths import MODEL_REPOSITORY
from perf.lib.pipelines import EMBEDDING_MODELS

ConfigEdit = Callable[[ModelConfig], None]  # changes the config in place


class ConfigEditError(ValueError):
    """An edit found nothing to change: the config no longer has the field it is meant to change."""


def read_config(path: Path) -> ModelConfig:
    """A config.pbtxt as a `ModelConfig`; a field Triton's schema does not know fails the parse."""
    return text_format.Parse(path.read_text(), ModelConfig())


def write_config(path: Path, config: ModelConfig, note: str = "") -> None:
    header = f"# {note}\n" if note else ""
    path.write_text(header + text_format.MessageToString(config))


def variant_repository(
    dest: Path,
    edits: Mapping[str, ConfigEdit],
    models: Iterable[str] = EMBEDDING_MODELS,
    source: Path = MODEL_REPOSITORY,
) -> Path:
    """`dest` as a copy of `models` (default the embedding ensemble and its two steps) of `source`
    (model_repository/), with `edits` (model name -> edit) applied to their configs."""
    models = tuple(models)
    unknown = set(edits) - set(models)
    if unknown:
        raise ConfigEditError(f"edits for models not in the copy: {sorted(unknown)}")
    if dest.exists():
        shutil.rmtree(dest)
    for name in models:
        shutil.copytree(source / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        if name in edits:
            path = dest / name / "config.pbtxt"
            config = read_config(path)
            edits[name](config)
            write_config(path, config, f"perf variant of {source / name / 'config.pbtxt'}")
    return dest


def without_dynamic_batching(config: ModelConfig) -> None:
    """No `dynamic_batching`: every execute() then gets exactly one request (max_batch_size stays, so the
    ensemble still accepts the model)."""
    if not config.HasField("dynamic_batching"):
        raise ConfigEditError(f"{config.name}: no dynamic_batching to remove")
    config.ClearField("dynamic_batching")


def with_parameter(name: str, value: str) -> ConfigEdit:
    """The string parameter `name` (which must already be there) set to `value`."""

    def edit(config: ModelConfig) -> None:
        if name not in config.parameters:
            raise ConfigEditError(f"{config.name}: no parameter {name!r}")
        config.parameters[name].string_value = value

    return edit


def with_max_batch_size(size: int) -> ConfigEdit:
    """`max_batch_size` set to `size`; the model must already batch (0 would change its input shapes)."""

    def edit(config: ModelConfig) -> None:
        if config.max_batch_size <= 0:
            raise ConfigEditError(f"{config.name}: max_batch_size is not set")
        config.max_batch_size = size

    return edit


def with_instance_count(count: int) -> ConfigEdit:
    """`count` instances in the model's one instance group."""

    def edit(config: ModelConfig) -> None:
        if len(config.instance_group) != 1:
            found = len(config.instance_group)
            raise ConfigEditError(f"{config.name}: expected one instance_group, found {found}")
        config.instance_group[0].count = count

    return edit


def compose(*edits: ConfigEdit) -> ConfigEdit:
    def edit(config: ModelConfig) -> None:
        for step in edits:
            step(config)

    return edit
