"""tritonserver and the OpenAI-compatible gateway in front of it, both on free ports, for the HTTP benchmarks.

``GatewayStack`` starts the real server on the project's model_repository (tiny checkpoints unless
MODEL_PATH / RERANKER_MODEL_PATH say otherwise), then the gateway pointed at its gRPC port
(``tools.gateway_process``, as the launcher and the tests start it), and waits for the gateway's /health.
Stopping ends the gateway first (it holds a channel to Triton), then the server.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

from tools.gateway_process import GatewayProcess
from tools.triton_server import TritonServer

REPO = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = REPO / "model_repository"
TINY_EMBEDDING = REPO / "models" / "qwen3-vl-embedding-tiny"
TINY_RERANKER = REPO / "models" / "qwen3-vl-reranker-tiny"
# The names vLLM users pass as `model`; the gateway accepts them when told to (SERVED_MODEL_NAME).
EMBEDDING_NAME = "Qwen/Qwen3-VL-Embedding-8B"
RERANKER_NAME = "Qwen/Qwen3-VL-Reranker-8B"


def shown_path(path: Path) -> str:
    """A path inside the checkout relative to it, so that a recorded command is the one to type."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


class GatewayStack:
    """tritonserver + gateway: ``base_url`` is the gateway's, ``server`` a ``TritonServer``."""

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
        self.server: TritonServer | None = None
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

        for path, kind in ((self.embedding_model, "embedding"), (self.reranker_model, "reranker")):
            if path in (TINY_EMBEDDING, TINY_RERANKER) and not is_complete_checkpoint(path):
                build_tiny_checkpoint(path, kind=kind)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # The server reads its deployment overrides from the environment: only the model paths are set.
        env: dict[str, str | None] = dict.fromkeys(SERVER_ENV_VARIABLES)
        env.update(MODEL_PATH=str(self.embedding_model), RERANKER_MODEL_PATH=str(self.reranker_model))
        saved = {name: os.environ.get(name) for name in env}
        try:
            _apply(env)
            self.server = TritonServer(MODEL_REPOSITORY, log_path=self.log_dir / "tritonserver.log").start()
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
        assert self.server is not None, "tritonserver is not started"
        self.gateway = GatewayProcess(self.server.grpc_url, environment, self.gateway_log).start()

    def prioritize(self, nice: int) -> list[str]:
        """Give the server, the gateway and this process (with the clients it starts) scheduling priority
        `nice`. With autogroup scheduling (Linux's default) every session shares the cores as one group, and
        the server and gateway lead sessions of their own: their group's nice is what counts against other
        work on the machine, a process's own nice only within its group. Returns what could not be set."""
        assert self.server is not None and self.gateway is not None, "the stack is not started"
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
            gateway.stop()
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
