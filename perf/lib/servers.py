"""The server a measurement talks to: one already running (`make serve`) or a tritonserver started here on
free ports for a checkpoint and a model repository (the project's, or a variant copy)."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from backend.settings import SERVER_ENV_VARIABLES
from perf.lib.console import log
from perf.lib.paths import MODEL_REPOSITORY
from perf.lib.pipelines import ENSEMBLE

# Environment variables that change what a started server serves; cleared unless set on purpose.
SERVER_OVERRIDES = SERVER_ENV_VARIABLES


@dataclass
class Endpoint:
    """A server to measure: one this script started (`server` set) or one that was already running."""

    label: str
    http: str
    grpc: str
    metrics_url: str
    model_path: str = ""
    server: object | None = None
    log_path: str = ""

    def url(self, protocol: str) -> str:
        return self.http if protocol == "http" else self.grpc

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()  # type: ignore[attr-defined]
            self.server = None


def http_get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def serves_embedding(http: str) -> bool:
    try:
        http_get(f"http://{http}/v2/models/{ENSEMBLE}/ready", timeout=2.0)
        return True
    except (urllib.error.URLError, OSError):
        return False


def running_server(label: str = "served") -> Endpoint | None:
    """The server `make serve` runs (TRITON_*_PORT on localhost), if it is up and serves the ensemble."""
    http_port = os.environ.get("TRITON_HTTP_PORT", "8000")
    endpoint = Endpoint(
        label=label,
        http=f"127.0.0.1:{http_port}",
        grpc=f"127.0.0.1:{os.environ.get('TRITON_GRPC_PORT', '8001')}",
        metrics_url=f"http://127.0.0.1:{os.environ.get('TRITON_METRICS_PORT', '8002')}/metrics",
        model_path=os.environ.get("MODEL_PATH", "(running server)"),
    )
    return endpoint if serves_embedding(endpoint.http) else None


def _set_environment(values: Mapping[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@contextlib.contextmanager
def environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """`values` in os.environ for the block (None: unset), then what was there before."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        _set_environment(values)
        yield
    finally:
        _set_environment(saved)


def exit_on_sigterm() -> None:
    """Make SIGTERM to this process a SystemExit, so that the `finally` blocks that stop the servers it
    started run: a tritonserver started here leads its own session, and a perf tool killed outright left it
    running with parent 1. Only from the main thread, and only where SIGTERM still has its default action."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def as_served(
    repository: Path,
    load_models: Sequence[str] = (),
    venv: Path | None = None,
    model_instances: int = 0,
    label: str = "server",
) -> Path:
    """`repository` with the model steps' instances `make serve` would give them in this environment (0,
    auto: tools.repository) or `model_instances`: itself, or a copy in a temporary directory removed at
    exit."""
    from tools.repository import serving_repository
    from tools.triton_install import venv_python

    scratch = Path(tempfile.mkdtemp(prefix="qwen3vl-repository-"))
    atexit.register(shutil.rmtree, scratch, True)
    python = venv_python(Path(venv or sys.prefix))
    served, plan = serving_repository(repository, model_instances, python, load_models, scratch)
    if plan.count is not None:
        log(f"  server '{label}': model steps with {plan.count} instance(s) ({plan.reason})")
    return served


def start_server(
    label: str,
    model: Path,
    log_path: Path,
    repository: Path = MODEL_REPOSITORY,
    env: Mapping[str, str] | None = None,
    startup_timeout: float = 900.0,
    ensembles: Sequence[str] = (ENSEMBLE,),
    venv: Path | None = None,
    ports: Sequence[int] = (),
    model_instances: int | None = 0,
) -> Endpoint:
    """tritonserver on free ports (or `ports`: http, grpc, metrics) serving only `ensembles` (default the
    embedding one, each with its two steps) of `repository`. `model` is the embedding checkpoint; a
    reranker's comes in `env` (RERANKER_MODEL_PATH). `venv`: the environment whose python3 the Python
    stubs run, so whose `backend` they import (default this interpreter's). `model_instances`: the model
    steps' instances as `make serve` chooses them (0, auto: tools.repository), a number, or None for the
    repository's own count."""
    from tools.triton_server import TritonServer

    exit_on_sigterm()
    overrides: dict[str, str | None] = dict.fromkeys(SERVER_OVERRIDES)
    overrides.update({"MODEL_PATH": str(model), "TOKENIZERS_PARALLELISM": "false"})
    overrides.update(env or {})
    started = time.monotonic()
    with environment(overrides):
        if model_instances is not None:
            repository = as_served(Path(repository), ensembles, venv, model_instances, label)
        http_port, grpc_port, metrics_port = (*ports, None, None, None)[:3]
        server = TritonServer(
            repository,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            venv=venv,
            log_path=log_path,
            extra_args=["--model-control-mode=explicit"] + [f"--load-model={name}" for name in ensembles],
            startup_timeout=startup_timeout,
        )
        server.start()
    log(f"  server '{label}' ready in {time.monotonic() - started:.1f} s (http {server.http_port})")
    return Endpoint(
        label=label,
        http=server.http_url,
        grpc=server.grpc_url,
        metrics_url=server.metrics_url,
        model_path=str(model),
        server=server,
        log_path=str(log_path),
    )
