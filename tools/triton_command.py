"""The tritonserver command line: the options every server of this project runs with.

``server_command`` puts them after the binary and directory options (``triton_install.wheel_server`` or
``InstalledServer.command``); the caller's own arguments come last, so they can override any of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tools.ports import DEFAULT_HOST

# The Python backend starts with 1 MiB per stub and grows in 1 MiB steps; a bigger first region
# avoids repeated growth for image/video tensors.
# Triton's own HTTP port binds here whatever --host says: tritonserver 2.51 (the PyPI wheel) crashes on a
# deeply nested JSON body and inflates compressed bodies whole, so clients use the gateway's KServe REST
# front instead (gateway/kserve.py); only this host's tools (health checks, make perf) reach Triton's HTTP.
HTTP_HOST = "127.0.0.1"
SHM_DEFAULT_BYTE_SIZE = 16 * 1024 * 1024
# How long tritonserver waits for in-flight requests and model unloads after SIGTERM (unloading the
# four Python models takes 6-9 s on a busy 2-core host); TritonServer.stop() waits a margin longer.
EXIT_TIMEOUT_SECS = 10
# What tritonserver still prints on a host without an NVIDIA driver once cpu_host_args turned off the rest;
# the launcher says so before the server starts, so that nobody reads them as the failure they look like.
CPU_HOST_ERROR_LINES = (
    "no NVIDIA driver (/dev/nvidiactl): tritonserver's error lines 'CudaDriverHelper has not been "
    "initialized' and 'unable to create stream ... CUDA driver version is insufficient' are expected and "
    "harmless (it serves on the CPU; its ensembles run without a CUDA stream)"
)


def control_args(extra_args: Sequence[str]) -> list[str]:
    """Explicit model control with every model loaded, unless ``extra_args`` choose otherwise.

    Explicit mode is what lets the watchdog (tools.watchdog) unload and reload a model whose stub
    died; with ``--load-model=*`` it serves the same models as the default "none" mode.
    """
    if any(arg.startswith("--model-control-mode") for arg in extra_args):
        return []
    loads = [] if any(arg.startswith("--load-model") for arg in extra_args) else ["--load-model=*"]
    return ["--model-control-mode=explicit", *loads]


def has_nvidia_gpu() -> bool:
    return Path("/dev/nvidiactl").exists()


def cpu_host_args() -> list[str]:
    """On a host without an NVIDIA driver, skip what can only warn: the pinned and CUDA memory pools
    and GPU metrics (NVML/DCGM). Two error lines remain (CPU_HOST_ERROR_LINES)."""
    if has_nvidia_gpu():
        return []
    return [
        "--pinned-memory-pool-byte-size=0",
        "--cuda-memory-pool-byte-size=0:0",
        "--allow-gpu-metrics=false",
    ]


def server_command(
    model_repository: Path,
    server: Sequence[str],
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    extra_args: Sequence[str] = (),
    log_verbose: int = 0,
    shm_prefix: str | None = None,
    host: str = DEFAULT_HOST,
    exit_timeout: int = EXIT_TIMEOUT_SECS,
    http_host: str = HTTP_HOST,
) -> list[str]:
    """The tritonserver argv: ``server`` (binary and directory options, from ``wheel_server`` or
    ``InstalledServer.command``), then the options; ``extra_args`` come last so they can override them.
    gRPC and metrics bind ``host``; HTTP binds ``http_host`` (loopback unless asked otherwise)."""
    command = [
        *server,
        f"--model-repository={Path(model_repository).resolve()}",
        f"--http-address={http_host}",
        f"--http-port={http_port}",
        f"--grpc-address={host}",
        f"--grpc-port={grpc_port}",
        f"--metrics-address={host}",
        f"--metrics-port={metrics_port}",
        f"--backend-config=python,shm-default-byte-size={SHM_DEFAULT_BYTE_SIZE}",
        f"--exit-timeout-secs={exit_timeout}",
        f"--log-verbose={log_verbose}",
        # Every config is complete; without this the Python backend starts one more stub per model load
        # only to ask model.py for config additions, which imports torch: 7-20 s of each (re)load.
        "--disable-auto-complete-config",
        *control_args(extra_args),
        *cpu_host_args(),
    ]
    if shm_prefix:
        command.append(f"--backend-config=python,shm-region-prefix-name={shm_prefix}")
    command.extend(extra_args)
    return command
