"""The repository a server is started with: the model steps' instance count, as the host calls for.

``config.pbtxt`` says one instance per model step, which is right where the step runs on a GPU or an NPU
(instance k uses device k; a second instance on one device would hold a second copy of the weights there).
On a CPU-only host two instances serve more: each is its own process with its own GIL and takes half the
cores, and while one waits for the answers of its batch to leave, the other computes (tiny model, 2 cores,
text_200 c=32: 265-325 -> 353-355 requests/s, image_448 c=32 66-69 -> 73-76; bench model text and images
level or ahead; perf/results/cpu-x86_64-2c/2026-12-07/server-variants/). So ``make serve``, the images and
the perf tools serve a copy of the repository with ``MODEL_INSTANCES`` model-step instances, where the
default (``auto``) is: two on a CPU-only host when there are two cores and the weights of both copies
take at most half the memory available, else what the repository says.

``set_instance_count`` edits a config's single instance group (also the preprocess steps' count that the
images set from ``PREPROCESS_INSTANCES``).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.device_probe import CPU_PLATFORM
from tools.preflight import ModelConfig, model_path, probe_device, read_repository, served_models, setting

# The environment variable the launcher (and the images' entrypoint) read: a number, or auto / 0 / unset.
MODEL_INSTANCES_ENV = "MODEL_INSTANCES"
# Model-step instances on a CPU-only host (measured on 2 cores: docs/sizing.md, "CPU lanes").
CPU_MODEL_INSTANCES = 2
# Weights held on the CPU in float32: twice a bfloat16 checkpoint's files (an upper bound for fp32 files).
CPU_WEIGHT_FACTOR = 2
# The model steps' weights, all instances together, may take at most this share of MemAvailable.
CPU_WEIGHTS_SHARE = 0.5
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
_INSTANCE_COUNT = re.compile(r"(instance_group\s*\[\s*\{\s*count:\s*)(\d+)")


def set_instance_count(config: str, count: int) -> str:
    """config.pbtxt text with its (single) instance group's count replaced."""
    updated, replaced = _INSTANCE_COUNT.subn(lambda m: f"{m.group(1)}{count}", config)
    if replaced != 1:
        raise ValueError(f"expected one instance_group with a count, found {replaced}")
    return updated


def instance_count(config: str) -> int:
    """The count of a config.pbtxt's (single) instance group."""
    match = _INSTANCE_COUNT.search(config)
    if match is None:
        raise ValueError("expected one instance_group with a count")
    return int(match.group(2))


def parse_model_instances(value: str | None) -> int:
    """MODEL_INSTANCES / --model-instances: a count >= 1, or 0 for auto (also 'auto' and empty)."""
    text = (value or "").strip().lower()
    if text in ("", "auto", "0"):
        return 0
    if not text.isdigit():
        raise ValueError(f"{MODEL_INSTANCES_ENV}={value!r}: give a number of instances, or auto")
    return int(text)


def weight_bytes(checkpoint: Path) -> int | None:
    """The size of a checkpoint's weight files, or None where there is no local directory to measure."""
    if not checkpoint.is_dir():
        return None
    return sum(path.stat().st_size for path in checkpoint.iterdir() if path.suffix in WEIGHT_SUFFIXES)


def available_memory() -> int:
    """MemAvailable from /proc/meminfo, in bytes (all of the physical memory where it is missing)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def cpu_model_instances(cores: int, weights: Iterable[int | None], available: int) -> tuple[int, str]:
    """How many instances each model step runs on a CPU-only host, and why, from the cores, the weight
    files of the model steps served (None: unknown) and the memory available."""
    if cores < CPU_MODEL_INSTANCES:
        return 1, f"{cores} core(s)"
    sizes = list(weights)
    if any(size is None for size in sizes):
        return 1, "a checkpoint's size is unknown"
    needed = CPU_MODEL_INSTANCES * CPU_WEIGHT_FACTOR * sum(size or 0 for size in sizes)
    if needed > CPU_WEIGHTS_SHARE * available:
        return 1, (
            f"{CPU_MODEL_INSTANCES} copies of the weights would take {needed / 2**30:.1f} GiB of the "
            f"{available / 2**30:.1f} GiB available"
        )
    return CPU_MODEL_INSTANCES, f"CPU only, {cores} cores, weights {needed / 2**30:.2f} GiB for all copies"


@dataclass(frozen=True)
class InstancePlan:
    """The model steps' instance count to serve with (None: as the repository says) and why."""

    count: int | None
    reason: str


def model_steps(models: Iterable[ModelConfig]) -> list[ModelConfig]:
    """The models that run torch (those with a device setting)."""
    return [config for config in models if "device" in config.parameters]


def runs_on_cpu(device: str, python: Path) -> bool:
    """Whether a model step with this device setting runs on the CPU (auto asks tools.device_probe)."""
    kind = device.strip().lower().partition(":")[0]
    if kind in ("", "auto"):
        return probe_device(python, "auto").get("platform") == CPU_PLATFORM
    return kind == "cpu"


def plan_model_instances(
    repository: Path,
    requested: int,
    python: Path,
    load_models: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    cores: int | None = None,
    available: int | None = None,
) -> InstancePlan:
    """The instance count for the model steps that a server of ``repository`` loads: ``requested``
    (>= 1), or for 0 (auto) the CPU count where every one of them runs on the CPU."""
    environ = os.environ if environ is None else environ
    steps = model_steps(served_models(read_repository(repository), load_models))
    if requested:
        return InstancePlan(requested, f"{MODEL_INSTANCES_ENV}={requested}")
    if not steps:
        return InstancePlan(None, "no model step served")
    if not all(runs_on_cpu(setting(step, "device", environ)[0], python) for step in steps):
        return InstancePlan(
            None, "a model step runs on an accelerator: one instance per device as configured"
        )
    count, why = cpu_model_instances(
        cores if cores is not None else len(os.sched_getaffinity(0)),
        [weight_bytes(model_path(step, environ, cwd or Path.cwd())) for step in steps],
        available if available is not None else available_memory(),
    )
    return InstancePlan(count, why)


def with_model_instances(source: Path, dest: Path, count: int, load_models: Sequence[str] = ()) -> Path:
    """``source`` if its model steps already have ``count`` instances, else a copy of it at ``dest``
    (replaced) whose model steps have."""
    steps = model_steps(served_models(read_repository(source), load_models))
    changed = [
        step.name
        for step in steps
        if instance_count((source / step.name / "config.pbtxt").read_text()) != count
    ]
    if not changed:
        return source
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__"))
    for name in changed:
        config = dest / name / "config.pbtxt"
        config.write_text(set_instance_count(config.read_text(), count))
    return dest


def serving_repository(
    repository: Path, requested: int, python: Path, load_models: Sequence[str], scratch: Path
) -> tuple[Path, InstancePlan]:
    """The repository a server of ``load_models`` serves, and the plan behind it: ``repository`` itself, or
    a copy at ``scratch``/model_repository with the model steps' count that ``plan_model_instances`` chose
    (``requested``: a number, or 0 for auto; ``python``: the stubs' interpreter, for the device probe)."""
    plan = plan_model_instances(repository, requested, python, load_models)
    if plan.count is None:
        return repository, plan
    return with_model_instances(repository, scratch / "model_repository", plan.count, load_models), plan
