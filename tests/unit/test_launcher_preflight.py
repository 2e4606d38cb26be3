"""The launcher's preflight checks and command line, without starting a server."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.unit.test_protocol import _config
from tools.launcher import _load_model_args
from tools.preflight import (
    PreflightError,
    check_device,
    check_model_path,
    check_ports,
    probe_device,
    read_model_config,
    read_repository,
    requested_devices,
    served_models,
)
from tools.supervisor import RESTART_BACKOFF_MAX_SECS, restart_delay
from tools.triton_command import control_args

REPOSITORY = REPO / "model_repository"


def test_repository_configs_are_read():
    configs = read_repository(REPOSITORY)
    assert configs["qwen3_vl_embedding"].ensemble_steps == (
        "qwen3_vl_embedding_preprocess",
        "qwen3_vl_embedding_model",
    )
    assert configs["qwen3_vl_reranker_model"].parameters["device"] == "auto"
    assert "model_path" in configs["qwen3_vl_embedding_preprocess"].parameters


def test_commented_out_parameters_are_ignored(tmp_path):
    config = tmp_path / "m" / "config.pbtxt"
    config.parent.mkdir()
    config.write_text(
        'name: "m"\n'
        '# parameters { key: "device" value: { string_value: "cuda" } }\n'
        'parameters { key: "model_path" value: { string_value: "/x" } }\n'
    )
    assert read_model_config(config).parameters == {"model_path": "/x"}


def test_served_models_follow_load_model_and_ensemble_steps():
    configs = read_repository(REPOSITORY)
    names = {config.name for config in served_models(configs, ["qwen3_vl_embedding"])}
    assert names == {"qwen3_vl_embedding", "qwen3_vl_embedding_preprocess", "qwen3_vl_embedding_model"}
    assert len(served_models(configs, ["*"])) == len(served_models(configs, [])) == len(configs)


def test_environment_overrides_the_right_models_path(tmp_path):
    configs = read_repository(REPOSITORY)
    reranker_env = {"RERANKER_MODEL_PATH": str(tmp_path / "missing")}
    check_model_path(configs["qwen3_vl_embedding_model"], reranker_env, REPO)  # MODEL_PATH unset: default
    with pytest.raises(PreflightError, match="^RERANKER_MODEL_PATH = .*missing.*: no such directory"):
        check_model_path(configs["qwen3_vl_reranker_preprocess"], reranker_env, REPO)


def test_a_directory_needs_config_and_tokenizer(tmp_path):
    config = read_repository(REPOSITORY)["qwen3_vl_embedding_model"]
    env = {"MODEL_PATH": str(tmp_path)}
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(PreflightError, match="has no tokenizer.json"):
        check_model_path(config, env, REPO)
    (tmp_path / "vocab.json").write_text("{}")
    (tmp_path / "merges.txt").write_text("")
    check_model_path(config, env, REPO)


def test_only_explicit_accelerators_are_probed():
    models = read_repository(REPOSITORY).values()
    assert requested_devices(models, {}) == {}
    assert requested_devices(models, {"DEVICE": "cpu"}) == {}
    assert requested_devices(models, {"DEVICE": "CUDA:1"}) == {"cuda:1": "DEVICE"}


def test_the_device_probe_asks_the_backend_platforms():
    """Whether a device can serve is backend.runtime.platforms' answer, run in the venv's Python; a CPU-only
    torch and a missing torch_npu are told from the installed files without importing torch."""
    python = Path(sys.executable)
    assert "choose one of auto, cpu, cuda, npu" in probe_device(python, "tpu")["refused"]
    assert probe_device(python, "cpu:0")["platform"] == "Platform(cpu)"
    if not probe_device(python, "cuda")["cuda_build"]:
        with pytest.raises(PreflightError, match="^DEVICE = 'cuda', but the torch in this venv .* CPU-only"):
            check_device("cuda", "DEVICE", python)


def test_ports_must_be_free_and_distinct():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(PreflightError, match=f"^HTTP 127.0.0.1:{port} is not free"):
            check_ports("127.0.0.1", {"HTTP": port})
    with pytest.raises(PreflightError, match="both"):
        check_ports("127.0.0.1", {"HTTP": port, "gRPC": port})
    check_ports("127.0.0.1", {"HTTP": port})  # closed again: free


def test_a_busy_port_names_the_process_that_holds_it():
    """A leftover server of an earlier run is named by pid and command line, so it can be stopped."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
            "print(s.getsockname()[1], flush=True); time.sleep(60)  # leftover-server",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        port = int(holder.stdout.readline())
        with pytest.raises(PreflightError) as error:
            check_ports("127.0.0.1", {"HTTP port (TRITON_HTTP_PORT)": port})
        message = str(error.value)
        assert message.startswith(f"HTTP port (TRITON_HTTP_PORT) 127.0.0.1:{port} is not free ("), message
        assert f"held by pid {holder.pid} ({sys.executable} -c import socket" in message, message
        assert message.endswith("; stop it or choose another port"), message
    finally:
        holder.kill()
        holder.wait()


def test_explicit_model_control_unless_the_caller_chooses():
    assert control_args([]) == ["--model-control-mode=explicit", "--load-model=*"]
    assert control_args(["--load-model=qwen3_vl_embedding"]) == ["--model-control-mode=explicit"]
    assert control_args(["--model-control-mode=none"]) == []
    assert _load_model_args(["--load-model=a", "--load-model", "b", "--log-info=true"]) == ["a", "b"]


def test_restart_backoff_doubles_up_to_a_cap():
    assert [restart_delay(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert restart_delay(30) == RESTART_BACKOFF_MAX_SECS


def test_model_steps_shed_load_with_a_bounded_queue():
    """The preprocess steps have Triton's bounded queue (overflow and timeouts refused, UNAVAILABLE); the
    model steps bound theirs by a queue timeout of their own, since Triton's queue policy would make the
    batcher of a one-instance step sleep up to 500 ms (backend.backpressure)."""
    for name in ("qwen3_vl_embedding_preprocess", "qwen3_vl_reranker_preprocess"):
        text = (REPOSITORY / name / "config.pbtxt").read_text()
        assert "default_queue_policy" in text, name
        assert "timeout_action: REJECT" in text, name
        assert int(_field(text, "max_queue_size")) > 0, name
        assert int(_field(text, "default_timeout_microseconds")) > 0, name
    for name in ("qwen3_vl_embedding_model", "qwen3_vl_reranker_model"):
        config = _config(REPOSITORY / name / "config.pbtxt")
        assert not config.dynamic_batching.HasField("default_queue_policy"), name
        assert float(config.parameters["queue_timeout_seconds"].string_value) > 0, name


def _field(text: str, key: str) -> str:
    import re

    match = re.search(rf"\b{key}:\s*(\d+)", text)
    assert match, key
    return match.group(1)


def test_preflight_runs_without_torch_in_the_launcher():
    """The launcher imports preflight, watchdog and supervisor; none of them may pull in torch."""
    import subprocess

    code = "import sys, tools.launcher, tools.preflight, tools.supervisor; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(REPO))
    assert result.stdout.strip() == "False", result.stderr
