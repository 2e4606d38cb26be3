"""Checks the launcher runs before tritonserver starts, so that a misconfiguration fails in seconds.

Without them a wrong ``MODEL_PATH`` surfaced after minutes as a Hugging Face "Repo id must be in the
form ..." error, ``DEVICE=cuda`` on a CPU host after 100 s and a busy port only once every model had
loaded (leaving shared-memory regions behind). Each check raises ``PreflightError`` with one line
that names the setting and says how to fix it.

The checks read the served repository's ``config.pbtxt`` files with a few regular expressions (no
protobuf parser needed) and ask about an explicit device in a child process (tools.device_probe, which
asks backend.runtime.platforms), so the launcher itself never imports torch and a crashing accelerator
runtime (torch_npu without CANN) cannot take it down.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from backend.settings import DEFAULT_EMBEDDING_MODEL, DEFAULT_RERANKER_MODEL, EMBEDDING_ENV, RERANKER_ENV
from tools.ports import describe_port_holders

# The checkout whose tools.device_probe and backend the probe runs.
REPO = Path(__file__).resolve().parent.parent
# torch's import dominates (2-3 s on a loaded 2-core host); a probe this slow means something is wrong.
DEVICE_PROBE_TIMEOUT_SECS = 20.0
# A checkpoint's tokenizer: the fast tokenizer file, or the BPE pair the slow one is built from.
TOKENIZER_FILE_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"))
# auto resolves (to the CPU at worst) and the CPU is always there: neither costs a torch import.
DEVICES_WITHOUT_PROBE = ("", "auto", "cpu")
CUDA_TORCH_HINT = ".venv/bin/pip install torch=={version} --index-url https://download.pytorch.org/whl/cu130"
NPU_HINT = (
    "source /usr/local/Ascend/ascend-toolkit/set_env.sh and install torch-npu matching torch {version} "
    "(docs/getting-started.md, 'Ascend NPU')"
)


class PreflightError(RuntimeError):
    """A configuration that cannot serve; the message is one line with the fix."""


@dataclass(frozen=True)
class ModelConfig:
    """What the checks need from one model's config.pbtxt."""

    name: str
    parameters: dict[str, str]
    ensemble_steps: tuple[str, ...]


_PARAMETER = re.compile(
    r'parameters\s*\{\s*key:\s*"(?P<key>[^"]+)"\s*value:\s*\{\s*string_value:\s*"(?P<value>[^"]*)"'
)
_STEP = re.compile(r'model_name:\s*"(?P<name>[^"]+)"')


def read_model_config(config_file: Path) -> ModelConfig:
    text = "\n".join(line.split("#", 1)[0] for line in config_file.read_text().splitlines())
    name_match = re.search(r'^\s*name:\s*"([^"]+)"', text, re.MULTILINE)
    steps = tuple(m["name"] for m in _STEP.finditer(text)) if "ensemble_scheduling" in text else ()
    return ModelConfig(
        name=name_match.group(1) if name_match else config_file.parent.name,
        parameters={m["key"]: m["value"] for m in _PARAMETER.finditer(text)},
        ensemble_steps=steps,
    )


def read_repository(repository: Path) -> dict[str, ModelConfig]:
    configs = [read_model_config(path) for path in sorted(Path(repository).glob("*/config.pbtxt"))]
    return {config.name: config for config in configs}


def served_models(configs: Mapping[str, ModelConfig], load_models: Sequence[str]) -> list[ModelConfig]:
    """The models tritonserver will load: all (``*`` or none named) or the named ones and their steps."""
    if not load_models or "*" in load_models:
        return list(configs.values())
    chosen: dict[str, ModelConfig] = {}
    pending = list(load_models)
    while pending:
        name = pending.pop()
        if name in chosen or name not in configs:
            continue
        chosen[name] = configs[name]
        pending.extend(configs[name].ensemble_steps)
    return list(chosen.values())


def _env_for(model_name: str) -> Mapping[str, str]:
    # The reranker's models take RERANKER_MODEL_PATH, the embedding ones MODEL_PATH (backend.settings).
    return RERANKER_ENV if "reranker" in model_name else EMBEDDING_ENV


def setting(config: ModelConfig, key: str, environ: Mapping[str, str]) -> tuple[str, str]:
    """(value, where it came from) for a parameter, the environment override winning as in the backend."""
    variable = _env_for(config.name).get(key)
    if variable and environ.get(variable):
        return environ[variable], variable
    return config.parameters.get(key, ""), f"parameter {key!r} of {config.name}/config.pbtxt"


def _model_path_setting(config: ModelConfig, environ: Mapping[str, str]) -> tuple[str, str]:
    value, source = setting(config, "model_path", environ)
    if not value:
        default = DEFAULT_RERANKER_MODEL if "reranker" in config.name else DEFAULT_EMBEDDING_MODEL
        value, source = str(default), f"the default of {config.name} (run `make models` to build it)"
    return value, source


def model_path(config: ModelConfig, environ: Mapping[str, str], cwd: Path) -> Path:
    """The checkpoint directory a model step loads: its setting (the environment first), else the default."""
    value = _model_path_setting(config, environ)[0]
    return Path(value) if Path(value).is_absolute() else cwd / value


def check_model_path(config: ModelConfig, environ: Mapping[str, str], cwd: Path) -> None:
    if "model_path" not in config.parameters:
        return
    value, source = _model_path_setting(config, environ)
    path = model_path(config, environ, cwd)
    download = "huggingface-cli download Qwen/<checkpoint> --local-dir DIR"
    if not path.is_dir():
        looks_like_repo_id = not Path(value).is_absolute() and value.count("/") == 1
        why = (
            "is a Hugging Face repo id, but a local directory is needed"
            if looks_like_repo_id
            else "no such directory"
        )
        raise PreflightError(
            f"{source} = {value!r}: {why}; download a checkpoint ({download}) and point it at DIR"
        )
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any(all((path / name).is_file() for name in names) for names in TOKENIZER_FILE_SETS):
        missing.append("tokenizer.json (or vocab.json + merges.txt)")
    if missing:
        raise PreflightError(
            f"{source} = {value!r}: the directory has no {' and no '.join(missing)}; "
            f"point it at a full checkpoint ({download})"
        )


def requested_devices(models: Iterable[ModelConfig], environ: Mapping[str, str]) -> dict[str, str]:
    """Device string -> where it was asked for, for the devices that need a probe (not auto/cpu)."""
    devices: dict[str, str] = {}
    for config in models:
        if "device" not in config.parameters:
            continue
        value, source = setting(config, "device", environ)
        if value.strip().lower() not in DEVICES_WITHOUT_PROBE:
            devices.setdefault(value.strip().lower(), source)
    return devices


def probe_device(python: Path, device: str, timeout: float = DEVICE_PROBE_TIMEOUT_SECS) -> dict:
    """Ask the venv's torch and the backend's platforms about ``device`` in a child process
    (tools.device_probe)."""
    try:
        result = subprocess.run(
            [str(python), "-m", "tools.device_probe", device],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"crash": f"the {device} probe (import torch) took over {timeout:.0f} s"}
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1][:200]
        how = f"signal {-result.returncode}" if result.returncode < 0 else f"exit code {result.returncode}"
        return {"crash": f"the {device} probe died ({how}): {last}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def check_device(device: str, source: str, python: Path) -> None:
    kind = device.partition(":")[0]
    probe = probe_device(python, device)
    version = str(probe.get("torch", "")).split("+")[0] or "<torch version>"
    if "crash" in probe:
        raise PreflightError(f"{source} = {device!r}: {probe['crash']}")
    if kind == "cuda" and not probe.get("cuda_build"):
        raise PreflightError(
            f"{source} = {device!r}, but the torch in this venv ({probe['torch']}) is a CPU-only build: "
            f"on a GPU host install the CUDA build ({CUDA_TORCH_HINT.format(version=version)}), or unset it"
        )
    if kind == "npu" and "error" in probe:
        raise PreflightError(
            f"{source} = {device!r}, but torch_npu does not import ({probe['error']}): "
            f"{NPU_HINT.format(version=version)}, or unset it"
        )
    if "refused" in probe:
        where = {
            "cuda": " (check nvidia-smi, the driver and CUDA_VISIBLE_DEVICES)",
            "npu": " (check npu-smi info)",
        }
        raise PreflightError(f"{source} = {device!r}: {probe['refused']}{where.get(kind, '')}, or unset it")


def check_ports(host: str, ports: Mapping[str, int]) -> None:
    """Each of ``ports`` ({"HTTP (TRITON_HTTP_PORT)": 8000, ...}) is distinct and free on ``host``."""
    seen: dict[int, str] = {}
    for label, port in ports.items():
        if port in seen:
            raise PreflightError(f"{label} and {seen[port]} are both {port}: give each its own port")
        seen[port] = label
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            # As the server does: a port in TIME_WAIT from an earlier run is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as error:
                # A leftover server of an earlier run is the usual holder: name it.
                holders = describe_port_holders(port)
                stop = (
                    f"held by {holders}; stop it"
                    if holders
                    else f"stop whatever listens there (`ss -ltnp 'sport = :{port}'` names it)"
                )
                raise PreflightError(
                    f"{label} {host}:{port} is not free ({error.strerror}); {stop} or choose another port"
                ) from None


def run_preflight(
    repository: Path,
    host: str,
    ports: Mapping[str, int],
    python: Path,
    load_models: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> None:
    """All checks, cheapest first; raises ``PreflightError`` on the first failure."""
    environ = os.environ if environ is None else environ
    repository = Path(repository)
    if not repository.is_dir():
        raise PreflightError(f"model repository {str(repository)!r} is not a directory")
    check_ports(host, ports)
    configs = read_repository(repository)
    missing = [name for name in load_models if name != "*" and name not in configs]
    if missing:
        raise PreflightError(f"--load-model {missing[0]!r} is not a model of {repository}")
    models = served_models(configs, load_models)
    for config in models:
        check_model_path(config, environ, cwd or Path.cwd())
    for device, source in requested_devices(models, environ).items():
        check_device(device, source, python)
