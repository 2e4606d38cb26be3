"""The serve loop behind ``make serve``: keep one tritonserver serving until told to stop.

- tritonserver dies (a segfault, the OOM killer, SIGKILL) or stops answering ``/v2/health/live`` for
  ``LIVENESS_TIMEOUT_SECS`` (then it is killed first): it is restarted on the same ports after a
  backoff that doubles with each crash in a row (1 s, 2 s, 4 s ... 60 s; a server that stayed up
  ``STABLE_SECS`` starts the count again), and each crash is logged with a running counter.
- a Python stub dies: ``tools.watchdog`` reloads its model through the repository API. What it cannot
  repair (a model past its reload cap, a failed reload, an ensemble still not READY after a reload) restarts
  tritonserver like a crash (same backoff and counter): readiness is false from the SIGTERM on, and the
  restarted server loads the whole repository again.
- the OpenAI/vLLM gateway beside it (when there is one): should it not come to listen on its port during
  the first start (the port taken, a bad setting), the launcher stops and exits 1; should it die later,
  it is restarted with the same backoff (a counter of its own).
- SIGTERM / Ctrl-C: tritonserver gets SIGTERM, drains in-flight requests within its exit timeout and
  unloads the models; should it still run at the deadline its whole process group is killed. A second
  signal kills at once. No stub and no /dev/shm region outlives the launcher.

Children are started from the serve loop's thread (the main thread), which lives as long as the launcher: a
child that dies with its parent (``tools.process_group.die_with_parent``) is signalled when the thread that
forked it ends.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from types import FrameType

from tools.gateway_process import GatewayProcess
from tools.ports import connect_host, describe_port_holders
from tools.process_group import signal_group
from tools.triton_server import StartCancelled, TritonServer, is_live
from tools.watchdog import MAX_RELOADS_PER_WINDOW, StubWatchdog

logger = logging.getLogger("launcher")

RESTART_BACKOFF_FIRST_SECS = 1.0
RESTART_BACKOFF_MAX_SECS = 60.0
STABLE_SECS = 120.0
POLL_SECS = 0.2
REPEAT_SIGNAL_SECS = 2.0
# A running server whose HTTP front has not answered /v2/health/live for this long is wedged (a hung
# shutdown, a deadlock) and is killed and restarted. Generous: a busy server still answers in milliseconds.
LIVENESS_TIMEOUT_SECS = 60.0
LIVENESS_PROBE_SECS = 5.0
# A restart the watchdog asks for gives requests in flight on the healthy models this long to finish before
# the server is killed; a request caught on the dead stub never finishes and would hold the stop for the whole
# exit timeout (20 s under `make serve`: measured 20.8 s of the 41 s from give-up to ready).
RESTART_DRAIN_SECS = 5.0


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    return f"killed by signal {-code} ({signal.Signals(-code).name})" if code < 0 else f"exit code {code}"


def restart_delay(crashes_in_a_row: int) -> float:
    return min(RESTART_BACKOFF_MAX_SECS, RESTART_BACKOFF_FIRST_SECS * 2 ** (crashes_in_a_row - 1))


class CrashCount:
    """Crashes since the launcher started and in a row; a server that stayed up ``STABLE_SECS`` ends a row.
    A restart the watchdog asks for counts like a crash."""

    def __init__(self) -> None:
        self.total = 0
        self.in_a_row = 0

    def record(self, up_seconds: float) -> float:
        """Count one crash of a server that ran ``up_seconds``; the seconds to wait before restarting it."""
        self.total += 1
        self.in_a_row = 1 if up_seconds > STABLE_SECS else self.in_a_row + 1
        return restart_delay(self.in_a_row)


class GatewayDidNotStart(RuntimeError):
    """The gateway exited (or never listened) while the launcher started."""


class Supervisor:
    def __init__(
        self,
        server: TritonServer,
        watch_stubs: bool = True,
        liveness_timeout: float | None = None,
        max_stub_reloads: int = MAX_RELOADS_PER_WINDOW,
        gateway: GatewayProcess | None = None,
    ) -> None:
        self.server = server
        # Started (not waited for) and stopped by the launcher; watched and restarted here.
        self.gateway = gateway
        self.gateway_crashes = CrashCount()
        self._gateway_up_since: float | None = None  # None until it listened once
        self._gateway_restart_at: float | None = None
        self.watch_stubs = watch_stubs
        self.max_stub_reloads = max_stub_reloads
        self.crashes = CrashCount()
        # (server pid, why) once the watchdog of that server asks for a restart.
        self._restart_request: tuple[int, str] | None = None
        self._stop = threading.Event()
        self._watchdog: StubWatchdog | None = None
        self.liveness_timeout = liveness_timeout or LIVENESS_TIMEOUT_SECS
        self._last_live = self._next_live_probe = 0.0
        self._stop_requested_at = 0.0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # A repeated signal within a moment is the same request delivered twice (a wrapper forwarding
        # it, a signal sent to the whole process group); a later one asks for an immediate stop.
        if (
            self._stop.is_set()
            and time.monotonic() - self._stop_requested_at > REPEAT_SIGNAL_SECS
            and self.server.pid
        ):
            logger.warning("second %s: killing tritonserver's process group now", signal.Signals(signum).name)
            signal_group(self.server.pid, signal.SIGKILL)
            return
        if not self._stop.is_set():
            logger.info("%s: stopping (in-flight requests may finish)", signal.Signals(signum).name)
            self._stop_requested_at = time.monotonic()
            self._stop.set()

    def _start(self) -> None:
        """Start tritonserver and its watchdog; raises RuntimeError / StartCancelled."""
        logger.info("starting tritonserver (shm prefix %s)", self.server.shm_prefix)
        self.server.start(cancel=self._stop)
        gateway = self.gateway
        if gateway is not None and self._gateway_up_since is None:
            # Started beside tritonserver, so by now it has (in seconds) unless it could not.
            try:
                gateway.wait_listening()
                self._gateway_up_since = time.monotonic()
            except RuntimeError as error:
                # Ctrl-C reaches the gateway too (the launcher's process group): then it is no failure.
                if not self._stop.is_set():
                    raise GatewayDidNotStart(str(error)) from None
        logger.info(
            "serving on http://%s (gRPC %s, metrics %s)%s; tritonserver pid %d, shm prefix %s, "
            "ready in %.1f s",
            self.server.http_url,
            self.server.grpc_url,
            self.server.metrics_url,
            f", OpenAI/vLLM gateway {gateway.url}" if gateway is not None and gateway.is_running() else "",
            self.server.pid,
            self.server.shm_prefix,
            self.server.startup_seconds or 0.0,
        )
        self._last_live = time.monotonic()
        if self.watch_stubs and self.server.pid:
            pid = self.server.pid
            self._watchdog = StubWatchdog(
                pid,
                f"http://{self.server.http_url}",
                on_escalate=lambda reason: self._request_restart(pid, reason),
                max_reloads=self.max_stub_reloads,
            ).start()

    def _request_restart(self, pid: int, reason: str) -> None:
        """Called from a watchdog thread; the serve loop restarts the server. A request from the watchdog of
        a server that is already gone is dropped."""
        if pid == self.server.pid:
            self._restart_request = (pid, reason)

    def _watch_gateway(self) -> None:
        """A gateway that died after its first start is restarted after a backoff, as tritonserver is."""
        gateway = self.gateway
        if gateway is None or self._gateway_up_since is None:
            return
        now = time.monotonic()
        if self._gateway_restart_at is not None:
            if now >= self._gateway_restart_at:
                self._gateway_restart_at = None
                self._gateway_up_since = now
                try:
                    gateway.start()  # from the serve loop's (main) thread: see the module's docstring
                except (OSError, subprocess.SubprocessError) as error:  # counted as a crash next round
                    logger.error("the OpenAI/vLLM gateway did not restart: %s", error)
                else:
                    logger.info("restarted the OpenAI/vLLM gateway (pid %d)", gateway.pid)
            return
        if gateway.is_running():
            return
        delay = self.gateway_crashes.record(now - self._gateway_up_since)
        holders = describe_port_holders(gateway.port)
        logger.error(
            "the OpenAI/vLLM gateway died (%s): crash %d, restarting in %.0f s%s",
            describe_exit(gateway.returncode),
            self.gateway_crashes.total,
            delay,
            f" ({gateway.host}:{gateway.port} is held by {holders})" if holders else "",
        )
        self._gateway_restart_at = now + delay

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None

    def _check_liveness(self) -> None:
        """A server that is alive but no longer answers (a wedged process) is killed, so that the loop
        restarts it like any crash."""
        now = time.monotonic()
        if now < self._next_live_probe:
            return
        self._next_live_probe = now + min(LIVENESS_PROBE_SECS, self.liveness_timeout / 4)
        if is_live(connect_host(self.server.http_host), self.server.http_port):
            self._last_live = now
        elif now - self._last_live > self.liveness_timeout and self.server.pid:
            logger.error(
                "tritonserver has not answered /v2/health/live for %.0f s; killing it", now - self._last_live
            )
            signal_group(self.server.pid, signal.SIGKILL)

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; 0 after a requested stop, 1 if the first start fails (tritonserver's
        or the gateway's)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        try:
            self._start()
        except StartCancelled:
            logger.info("stopped before tritonserver was ready")
            return 0
        except GatewayDidNotStart as error:
            logger.error("the OpenAI/vLLM gateway did not start: %s", error)
            self.server.stop()
            return 1
        except RuntimeError as error:
            logger.error("tritonserver did not start: %s", error)
            return 1
        started_at = time.monotonic()
        while not self._stop.wait(POLL_SECS):
            self._watch_gateway()
            request = self._restart_request
            reason = request[1] if request is not None and request[0] == self.server.pid else None
            if self.server.is_running() and reason is None:
                self._check_liveness()
                continue
            self._stop_watchdog()
            delay = self.crashes.record(time.monotonic() - started_at)
            if reason is not None and self.server.is_running():
                logger.error(
                    "restarting tritonserver: the stub watchdog cannot repair it (%s): crash %d, stopping it "
                    "(not ready from now on) and starting it %.0f s after it stops",
                    reason,
                    self.crashes.total,
                    delay,
                )
                # SIGTERM: readiness turns false at once and requests in flight on the other models finish.
                self.server.stop(grace=min(RESTART_DRAIN_SECS, self.server.exit_timeout))
            else:
                code = self.server.returncode
                self.server.stop()  # reaps leftover stubs and shared memory
                logger.error(
                    "tritonserver died (%s): crash %d, restarting in %.0f s",
                    describe_exit(code),
                    self.crashes.total,
                    delay,
                )
            self._restart_request = None
            if self._stop.wait(delay):
                break
            started_at = time.monotonic()
            try:
                self._start()
            except StartCancelled:
                break
            except RuntimeError as error:
                logger.error("restart failed: %s", error)
        self._stop_watchdog()
        code = self.server.stop()
        logger.info("tritonserver stopped (%s)", describe_exit(code))
        return 0
