"""tritonserver and the OpenAI-compatible gateway in front of it, both on free ports, for the HTTP benchmarks.

``GatewayStack`` starts the real server on the project's model_repository (tiny checkpoints unless
MODEL_PATH / RERANKER_MODEL_PATH say otherwise), then ``python -m gateway`` pointed at its gRPC port, and
waits for the gateway's /health. Stopping ends the gateway first (it holds a channel to Triton), then the
server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = REPO / "model_repository"
TINY_EMBEDDING = REPO / "models" / "qwen3-vl-embedding-tiny"
TINY_RERANKER = REPO / "models" / "qwen3-vl-reranker-tiny"
# The names vLLM users pass as `model`; the gateway accepts them when told to (SERVED_MODEL_NAME).
EMBEDDING_NAME = "Qwen/Qwen3-VL-Embedding-8B"
RERANKER_NAME = "Qwen/Qwen3-VL-Reranker-8B"
GATEWAY_STARTUP_S = 120.0
GATEWAY_STOP_GRACE_S = 10.0


def shown_path(path: Path) -> str:
    """A path inside the checkout relative to it, so that a recorded command is the one to type."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _get_status(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError):
        return 0


def _tail(path: Path, lines: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


class GatewayProcess:
    """``python -m gateway`` in its own session on a free port, in front of Triton's gRPC ``triton_grpc_url``,
    with ``environment`` on top of this process's environment (whose GATEWAY_* variables are left out);
    started and waited for (its /health) on enter, stopped on exit (SIGTERM to its group, SIGKILL after
    GATEWAY_STOP_GRACE_S)."""

    def __init__(self, triton_grpc_url: str, environment: dict[str, str], log_path: Path) -> None:
        from tools.launcher import free_port

        self.port = free_port()
        self.environment = {**environment, "GATEWAY_PORT": str(self.port), "TRITON_GRPC_URL": triton_grpc_url}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "the gateway is not running"
        return self.process.pid

    def __enter__(self) -> GatewayProcess:
        env = {name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}
        env.update(self.environment)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway"],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + GATEWAY_STARTUP_S
        while _get_status(f"{self.url}/health") != 200:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.__exit__()
                raise RuntimeError(f"gateway exited with {code}; {self.log_path}:\n" + _tail(self.log_path))
            if time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(
                    f"gateway not healthy after {GATEWAY_STARTUP_S:.0f} s:\n{_tail(self.log_path)}"
                )
            time.sleep(0.2)
        return self

    def __exit__(self, *exc_info: object) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=GATEWAY_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class GatewayStack:
    """tritonserver + gateway: ``base_url`` is the gateway's, ``server`` a ``tools.launcher.TritonServer``."""

    def __init__(
        self,
        log_dir: Path,
        embedding_model: Path | None = None,
        reranker_model: Path | None = None,
        gateway_env: dict[str, str] | None = None,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.embedding_model = Path(embedding_model or os.environ.get("MODEL_PATH") or TINY_EMBEDDING)
        self.reranker_model = Path(reranker_model or os.environ.get("RERANKER_MODEL_PATH") or TINY_RERANKER)
        self.gateway_env = dict(gateway_env or {})
        self.server = None
        self.gateway: GatewayProcess | None = None

    @property
    def base_url(self) -> str:
        assert self.gateway is not None, "the stack is not started"
        return self.gateway.url

    @property
    def gateway_log(self) -> Path:
        return self.log_dir / "gateway.log"

    def start(self) -> GatewayStack:
        from backend.settings import SERVER_ENV_VARIABLES
        from tools.checkpoint import build_tiny_checkpoint, is_complete_checkpoint
        from tools.launcher import TritonServer

        for path, kind in ((self.embedding_model, "embedding"), (self.reranker_model, "reranker")):
            if path in (TINY_EMBEDDING, TINY_RERANKER) and not is_complete_checkpoint(path):
                build_tiny_checkpoint(path, kind=kind)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # The server reads its deployment overrides from the environment: only the model paths are set.
        env = {name: None for name in SERVER_ENV_VARIABLES}
        env.update(MODEL_PATH=str(self.embedding_model), RERANKER_MODEL_PATH=str(self.reranker_model))
        saved = {name: os.environ.get(name) for name in env}
        try:
            _apply(env)
            self.server = TritonServer(MODEL_REPOSITORY, log_path=self.log_dir / "tritonserver.log")
            self.server.start()
        finally:
            _apply(saved)
        try:
            self._start_gateway()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_gateway(self) -> None:
        # GATEWAY_* settings in the caller's environment still reach the gateway (the benchmarks record
        # them); the stack's own and gateway_env come on top.
        environment = {name: value for name, value in os.environ.items() if name.startswith("GATEWAY_")}
        environment.update(
            SERVED_MODEL_NAME=f"{EMBEDDING_NAME},qwen3_vl_embedding",
            SERVED_RERANKER_MODEL_NAME=f"{RERANKER_NAME},qwen3_vl_reranker",
            GATEWAY_TOKENIZER=str(self.embedding_model),
        )
        environment.update(self.gateway_env)
        gateway = GatewayProcess(self.server.grpc_url, environment, self.gateway_log)
        gateway.__enter__()
        self.gateway = gateway

    def prioritize(self, nice: int) -> list[str]:
        """Give the server, the gateway and this process (with the clients it starts) scheduling priority
        `nice`. With autogroup scheduling (Linux's default) every session shares the cores as one group, and
        the server and gateway lead sessions of their own: their group's nice is what counts against other
        work on the machine, a process's own nice only within its group. Returns what could not be set."""
        failed = []
        for pid in (self.server.pid, self.gateway.pid, os.getpid()):
            try:
                Path(f"/proc/{pid}/autogroup").write_text(str(nice))
            except OSError as error:
                failed.append(f"pid {pid}: {error}")
        return failed

    def stop(self) -> None:
        gateway, self.gateway = self.gateway, None
        if gateway is not None:
            gateway.__exit__()
        server, self.server = self.server, None
        if server is not None:
            server.stop()

    def __enter__(self) -> GatewayStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _apply(values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
