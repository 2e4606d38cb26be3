"""The OpenAI/vLLM gateway (``python -m gateway``) as a child process: the one way the launcher, the tests
and the benchmarks start it.

``GatewayProcess`` runs the gateway on a port (a free one unless given) in front of a Triton gRPC URL, with
an environment of its own on top of this process's (whose ``GATEWAY_*`` variables are left out, so that a
caller's shell cannot change what a test or a benchmark runs). ``start()`` waits for ``/health`` (which
follows Triton's readiness) unless told not to; ``stop()`` sends SIGTERM (uvicorn finishes open requests)
and SIGKILL after a grace.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from tools.ports import connect_host, describe_port_holders, free_port, port_holders
from tools.process_group import die_with_parent, signal_group
from tools.triton_server import tail

REPO = Path(__file__).resolve().parent.parent
# Its /health turns 200 once it reaches Triton and Triton is ready; a cold start imports the tokenizer.
GATEWAY_STARTUP_SECS = 120.0
GATEWAY_STOP_GRACE_SECS = 10.0
POLL_SECS = 0.1


class GatewayProcess:
    """``python -m gateway`` on ``host``:``port`` in front of Triton's gRPC ``triton_grpc_url``.

    ``environment`` comes on top of this process's environment less its ``GATEWAY_*`` variables; the port,
    host and Triton URL on top of that. ``log_path``: a file (default a temporary one, kept after stop),
    or ``"-"`` for this process's stdout/stderr. ``own_session`` starts it as the leader of a process group
    of its own, which ``stop()`` signals whole; without it the gateway stays in the caller's group (the
    launcher's, so that Ctrl-C in a terminal reaches it too) and only the gateway itself is signalled.
    ``dies_with_parent``: it is SIGKILLed when this process dies, however it dies (start it from a
    long-lived thread: ``tools.process_group.die_with_parent``).
    Use as a context manager (start, wait for ``wait_for``, stop) or call ``start()`` / ``stop()``.
    """

    def __init__(
        self,
        triton_grpc_url: str,
        environment: Mapping[str, str] | None = None,
        log_path: Path | str | None = None,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        wait_for: str | None = "/health",
        startup_timeout: float = GATEWAY_STARTUP_SECS,
        own_session: bool = True,
        dies_with_parent: bool = False,
    ) -> None:
        self.dies_with_parent = dies_with_parent
        self.port = port or free_port()
        self.host = host
        self.environment = {
            **(environment or {}),
            "GATEWAY_HOST": host,
            "GATEWAY_PORT": str(self.port),
            "TRITON_GRPC_URL": triton_grpc_url,
        }
        self.to_console = str(log_path) == "-"
        self.log_path = Path(log_path) if log_path and not self.to_console else None
        self.wait_for = wait_for
        self.startup_timeout = startup_timeout
        self.own_session = own_session
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{connect_host(self.host)}:{self.port}"

    @property
    def pid(self) -> int:
        assert self._process is not None, "the gateway is not running"
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def listening(self) -> bool:
        """Whether the gateway itself listens on its port: an answer on the port alone could come from
        whatever else holds it."""
        return self.is_running() and bool(port_holders(self.port, among=[self.pid]))

    def wait_listening(self, timeout: float | None = None) -> None:
        """Until it listens on its port (it binds before it reaches Triton, in seconds); RuntimeError if it
        exits first (its port taken, a bad setting) or is still not listening after ``timeout`` seconds."""
        assert self._process is not None, "the gateway is not running"
        started = time.monotonic()
        deadline = started + (self.startup_timeout if timeout is None else timeout)
        while not self.listening():
            code = self._process.poll()
            if code is not None or time.monotonic() > deadline:
                where = f"{self.host}:{self.port}"
                holders = describe_port_holders(self.port)
                raise RuntimeError(
                    (
                        f"it exited with code {code} before listening on {where}"
                        if code is not None
                        else f"it is not listening on {where} after {deadline - started:.0f} s"
                    )
                    + (f" ({where} is held by {holders})" if holders else "")
                    + f"; {self._failure_detail()}"
                )
            time.sleep(POLL_SECS)

    def _open_log(self) -> Path:
        if self.log_path is None:
            # Kept after stop(): the log is the only record of why a gateway misbehaved.
            fd, name = tempfile.mkstemp(prefix="gateway-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        return self.log_path

    def start(self) -> GatewayProcess:
        """Start it and, unless ``wait_for`` is None, wait until that path answers 200; on a failure
        nothing is left running and the error carries the end of its log."""
        if self.is_running():
            raise RuntimeError("the gateway is already running")
        env = {name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}
        env.update(self.environment)
        with contextlib.ExitStack() as stack:
            output = None if self.to_console else stack.enter_context(self._open_log().open("ab"))
            self._process = subprocess.Popen(
                [sys.executable, "-m", "gateway"],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT if output else None,
                start_new_session=self.own_session,
                preexec_fn=die_with_parent() if self.dies_with_parent else None,
            )
        if self.wait_for is not None:
            try:
                self._wait_healthy(self.wait_for)
            except BaseException:
                self.stop()
                raise
        return self

    def _failure_detail(self) -> str:
        if self.log_path is None:
            return "see its log above"
        return f"last lines of {self.log_path}:\n{tail(self.log_path)}"

    def _wait_healthy(self, path: str) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while _status(f"{self.url}{path}") != 200:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"gateway exited with {self._process.returncode}; {self._failure_detail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"gateway not healthy after {self.startup_timeout:.0f} s; {self._failure_detail()}"
                )
            time.sleep(POLL_SECS)

    def stop(self, grace: float = GATEWAY_STOP_GRACE_SECS) -> int | None:
        """SIGTERM (uvicorn finishes open requests, then exits), SIGKILL ``grace`` seconds later; returns the
        exit code (None if it never started). Idempotent."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            self._signal(process, signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal(process, signal.SIGKILL)
                process.wait()
        return process.returncode

    def _signal(self, process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        if self.own_session:
            signal_group(process.pid, sig)  # it leads its group: whatever it started goes too
        else:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _status(url: str, timeout: float = 2.0) -> int:
    """The HTTP status of a GET, 0 when nothing answers (not listening yet)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        return 0
