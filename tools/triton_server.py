"""A tritonserver child process (``TritonServer``), for the launcher, tests and benchmarks.

Started in its own session so that the server and its Python backend stubs can be killed whole; started
means ready (``/v2/health/ready``); stopped means nothing left behind: no stub, no ``/dev/shm`` region, no
backpressure file of a killed model step.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from backend.backpressure import channel_files
from tools.ports import DEFAULT_HOST, connect_host, free_ports
from tools.process_group import die_with_parent, signal_group, wait_group_gone
from tools.triton_command import EXIT_TIMEOUT_SECS, HTTP_HOST, server_command
from tools.triton_install import (
    InstalledServer,
    default_runtime_dir,
    find_triton,
    prepare_runtime_dir,
    server_env,
    venv_python_version,
    wheel_server,
)

# Python backend's own default prefix; ours adds a per-server tag after it so that a server killed
# with SIGKILL can have exactly its leftovers removed.
SHM_PREFIX_BASE = "triton_python_backend_shm_region_"
# How much longer than its exit timeout stop() waits before it kills the whole process group.
STOP_MARGIN_SECS = 10.0
STUB_GRACE_SECS = 3.0
LOG_TAIL_LINES = 60


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log, for an error message."""
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"<cannot read {path}: {error}>"
    return "\n".join(text.splitlines()[-lines:])


def _is_ready(host: str, http_port: int) -> bool:
    return _health(host, http_port, "ready")


def is_live(host: str, http_port: int, timeout: float = 2.0) -> bool:
    return _health(host, http_port, "live", timeout)


def _health(host: str, http_port: int, what: str, timeout: float = 1.0) -> bool:
    url = f"http://{host}:{http_port}/v2/health/{what}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        # 400 (not ready yet), connection refused, timeouts and a non-HTTP answer (another process took the
        # port first: BadStatusLine) all just mean "poll again".
        return False


class StartCancelled(RuntimeError):
    """``start()`` was told to give up (the launcher got SIGTERM while models were loading)."""


class TritonServer:
    """A tritonserver child process, started in its own session so that it can be killed whole.

    Use as a context manager, or call ``start()`` / ``stop()``. ``log_path="-"`` lets the server write
    to this process's stdout/stderr (``make serve``); otherwise it logs to a file (a temporary one by
    default). ``dies_with_parent``: the server is SIGKILLed when this process dies, however it dies
    (``tools.process_group.die_with_parent``: start it from a long-lived thread); its stubs notice and exit.
    """

    def __init__(
        self,
        model_repository: Path | str,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        runtime_dir: Path | str | None = None,
        venv: Path | str | None = None,
        log_path: Path | str | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 240.0,
        log_verbose: int = 0,
        host: str = DEFAULT_HOST,
        exit_timeout: int = EXIT_TIMEOUT_SECS,
        installed: InstalledServer | None = None,
        dies_with_parent: bool = False,
        http_host: str = HTTP_HOST,
    ) -> None:
        self.dies_with_parent = dies_with_parent
        self.model_repository = Path(model_repository).resolve()
        # None: the wheel's server, run from runtime_dir; else that installed server (runtime_dir unused).
        self.installed = installed
        ports = iter(free_ports(3))
        self.http_port = http_port or next(ports)
        self.grpc_port = grpc_port or next(ports)
        self.metrics_port = metrics_port or next(ports)
        self.runtime_dir = Path(runtime_dir) if runtime_dir else default_runtime_dir()
        self.venv = Path(venv) if venv else Path(sys.prefix)
        self.to_console = str(log_path) == "-"
        self.log_path = Path(log_path) if log_path and not self.to_console else None
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.log_verbose = log_verbose
        self.host = host
        self.http_host = http_host  # Triton's HTTP: loopback by default (tools/triton_command.HTTP_HOST)
        # A --exit-timeout-secs among extra_args wins (tritonserver takes the last); stop() waits for it.
        passed = [arg.split("=", 1)[1] for arg in extra_args if arg.startswith("--exit-timeout-secs=")]
        self.exit_timeout = int(passed[-1]) if passed else exit_timeout
        self.startup_seconds: float | None = None
        self.shm_prefix = f"{SHM_PREFIX_BASE}{uuid.uuid4().hex[:12]}_"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"{connect_host(self.http_host)}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{connect_host(self.host)}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{connect_host(self.host)}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _open_log(self) -> Path:
        if self.log_path is None:
            # Kept after stop(): the log is the only record of why a test server misbehaved.
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        return self.log_path

    def start(self, cancel: threading.Event | None = None) -> TritonServer:
        """Start and wait until ready; on any failure nothing is left running and no /dev/shm region
        stays behind. A set ``cancel`` event stops the wait with ``StartCancelled``."""
        if self.is_running():
            raise RuntimeError("TritonServer already running")
        if self.installed is None:
            install = find_triton(venv_python_version(self.venv))
            runtime = prepare_runtime_dir(self.runtime_dir, install)
            server, env = wheel_server(runtime, install), server_env(self.venv, runtime, install)
        else:
            server, env = self.installed.command(), self.installed.env(self.venv)
        command = server_command(
            self.model_repository,
            server,
            self.http_port,
            self.grpc_port,
            self.metrics_port,
            self.extra_args,
            self.log_verbose,
            shm_prefix=self.shm_prefix,
            host=self.host,
            exit_timeout=self.exit_timeout,
            http_host=self.http_host,
        )
        started = time.monotonic()
        with contextlib.ExitStack() as stack:
            output = None if self.to_console else stack.enter_context(self._open_log().open("ab"))
            self._process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT if output else None,
                start_new_session=True,
                preexec_fn=die_with_parent() if self.dies_with_parent else None,
            )
        try:
            self._wait_ready(started + self.startup_timeout, cancel)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _failure_detail(self) -> str:
        if self.log_path is None:
            return "see its log above"
        return f"last lines of {self.log_path}:\n{tail(self.log_path)}"

    def _wait_ready(self, deadline: float, cancel: threading.Event | None) -> None:
        assert self._process is not None
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"tritonserver exited with code {self._process.returncode} before becoming "
                    f"ready; {self._failure_detail()}"
                )
            if _is_ready(connect_host(self.http_host), self.http_port):
                return
            if cancel is not None and cancel.is_set():
                raise StartCancelled("tritonserver start cancelled")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"tritonserver not ready after {self.startup_timeout:.1f} s; {self._failure_detail()}"
                )
            time.sleep(0.1)

    def stop(self, grace: float | None = None) -> int | None:
        """Graceful stop; returns the exit code. Idempotent.

        SIGTERM goes to tritonserver alone: it refuses new requests, lets in-flight ones finish and
        unloads the models (stopping their stubs) within ``--exit-timeout-secs``. Should it still run
        ``grace`` seconds later (default: the exit timeout plus a margin; a server with a dead stub can
        deadlock), the whole process group is killed. Leftover stubs and shared-memory regions are
        removed either way.

        Close clients first: the server waits out ``--exit-timeout-secs`` for every open HTTP
        keep-alive connection (a live ``InferenceServerClient``) and then exits with code 1.
        """
        process = self._process
        if process is None:
            return None
        pgid = process.pid  # start_new_session made the server its group's leader
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.exit_timeout + STOP_MARGIN_SECS if grace is None else grace)
            except subprocess.TimeoutExpired:
                signal_group(pgid, signal.SIGKILL)
                process.wait()
        # Stubs outlive a server that timed out or was killed and notice it only about a second
        # later; give them that second to clean up before they are killed too.
        if not wait_group_gone(pgid, STUB_GRACE_SECS):
            signal_group(pgid, signal.SIGKILL)
            wait_group_gone(pgid, STUB_GRACE_SECS)
        self.remove_leftover_shm()
        for path in channel_files(pgid):  # a killed model step leaves its file behind
            with contextlib.suppress(OSError):
                path.unlink()
        return process.returncode

    def leftover_shm(self) -> list[Path]:
        shm = Path("/dev/shm")
        return sorted(shm.glob(f"{self.shm_prefix}*")) if shm.is_dir() else []

    def remove_leftover_shm(self) -> None:
        # A clean shutdown unlinks these itself; after a SIGKILL they would stay in /dev/shm forever.
        for region in self.leftover_shm():
            with contextlib.suppress(OSError):
                region.unlink()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
