"""Reloads invisible through the gateway (issue 19, item 4): `python -m tools.launcher serve` with its
watchdog and its gateway serves tests/integration/reload_repository (the stand-in embedding ensemble of
test_reload.py); a few threads POST /v1/embeddings with plain urllib, which never retries, while the step's
stub or tritonserver itself is SIGKILLed. No call fails (the gateway holds and retries them), every vector is
the one the text always gets, and a call made once Triton is ready again is answered within 1 s.

Calls that were inside the killed stub's model instance when it died are not the gateway's to hurry: Triton's
python backend notices a dead stub by a 1 s health poll per batch it hands it (python_be.cc
SendMessageToStub), so each batch queued there fails after 1-2 s, and the gateway then resends it at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from tests.integration.test_reload import MODEL, REPOSITORY, SERVE_LINE, STEP, expected, ready, wait_for
from tools.ports import free_ports
from tools.watchdog import live_stubs

pytestmark = pytest.mark.server

# The bound: the gateway notices Triton is back within 1 s.
NOTICED_WITHIN_S = 1.0
# Calls caught in the dead stub's instance: a 1 s health poll per batch queued there (see the docstring).
CAUGHT_WITHIN_S = 10.0


class GatewayCaller(threading.Thread):
    """POSTs two texts per call to /v1/embeddings until stopped; every answer checked."""

    def __init__(self, number: int, base: str) -> None:
        super().__init__(daemon=True)
        self.number, self.base = number, base
        self.calls: list[tuple[float, float]] = []  # (start, seconds) of each successful call
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        count = 0
        while not self.stop.is_set():
            texts = [f"gateway caller {self.number} text {count % 7}", f"caller {self.number} call {count}"]
            count += 1
            body = json.dumps({"input": texts}).encode()
            request = urllib.request.Request(
                f"{self.base}/v1/embeddings", body, {"Content-Type": "application/json"}
            )
            started = time.monotonic()
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    data = json.loads(response.read())["data"]
            except urllib.error.HTTPError as error:
                self.failures.append(f"HTTP {error.code}: {error.read()[:300]!r}")
                continue
            except OSError as error:
                self.failures.append(f"{type(error).__name__}: {error}")
                continue
            self.calls.append((started, time.monotonic() - started))
            got = np.array([row["embedding"] for row in data], dtype=np.float32)
            want = np.stack([expected(text) for text in texts])
            # The gateway answers JSON floats; the stand-in's values are exact in float32.
            if got.shape != want.shape or not np.allclose(got, want, rtol=0, atol=1e-7):
                self.failures.append(f"wrong vectors for {texts}")


class Readiness(threading.Thread):
    """Triton's /v2/health/ready every 20 ms: (time, ready) of every change."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.changes: list[tuple[float, bool]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        last = None
        while not self.stop.is_set():
            now = ready(self.base)
            if now != last:
                self.changes.append((time.monotonic(), now))
                last = now
            time.sleep(0.02)

    def ready_again_after(self, moment: float) -> float | None:
        """When Triton was ready again after having been not ready after `moment` (None: never down)."""
        down = next((t for t, up in self.changes if t > moment and not up), None)
        if down is None:
            return None
        return next((t for t, up in self.changes if t > down and up), None)


def serve_with_gateway(tmp_path: Path):
    http_port, grpc_port, metrics_port, gateway_port = free_ports(4)
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(GATEWAY_PORT=str(gateway_port), GATEWAY_EMBEDDING_MODEL=MODEL)
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "tools.launcher", "serve",
             f"--model-repository={REPOSITORY}", f"--http-port={http_port}", f"--grpc-port={grpc_port}",
             f"--metrics-port={metrics_port}", "--exit-timeout-secs=5"],
            cwd=REPO, stdout=output, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    return process, log, f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{gateway_port}"


def gateway_up(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=2.0) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.mark.parametrize("target", [STEP, "tritonserver"])
def test_a_kill_under_load_fails_no_call_through_the_gateway(tmp_path, target):
    process, log, triton, gateway = serve_with_gateway(tmp_path)
    callers: list[GatewayCaller] = []
    readiness = Readiness(triton)
    server_pids: list[int] = []
    probe_answered: float | None = None
    try:
        assert wait_for(
            lambda: ready(triton) and gateway_up(gateway) and SERVE_LINE.search(log.read_text()), 90.0
        ), log.read_text()
        server_pid = int(SERVE_LINE.findall(log.read_text())[-1])
        server_pids.append(server_pid)
        callers = [GatewayCaller(number, gateway) for number in range(3)]
        readiness.start()
        for caller in callers:
            caller.start()
        assert wait_for(lambda: all(len(caller.calls) >= 5 for caller in callers), 30.0)
        if target == "tritonserver":
            victim = server_pid
        else:
            (victim,) = [pid for pid, model in live_stubs(server_pid).items() if model == STEP]
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        # Triton down (the watchdog unloads the model; the supervisor restarts the server), then ready again.
        assert wait_for(lambda: readiness.ready_again_after(killed) is not None, 90.0), log.read_text()
        back = readiness.ready_again_after(killed)
        assert back is not None
        # A call made now, with Triton ready again, is answered within 1 s (the gateway's own noticing).
        probe = GatewayCaller(len(callers), gateway)
        probe.start()
        assert wait_for(lambda: probe.calls or probe.failures, 30.0, interval=0.01)
        probe.stop.set()
        probe.join(timeout=30)
        probe_answered = sum(probe.calls[0]) if probe.calls else None
        callers.append(probe)
        # Every caller is served again after Triton is back.
        assert wait_for(lambda: all(caller.calls and caller.calls[-1][0] > back for caller in callers), 30.0)
        server_pids.extend(int(pid) for pid in SERVE_LINE.findall(log.read_text()))
    finally:
        readiness.stop.set()
        for caller in callers:
            caller.stop.set()
        for caller in callers:
            caller.join(timeout=130)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        for pid in set(server_pids):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    assert [failure for caller in callers for failure in caller.failures] == []
    assert probe_answered is not None
    # The first answer that ended after Triton was ready again (a call across the kill, or the probe).
    first = min(
        start + seconds for caller in callers for start, seconds in caller.calls if start + seconds > back
    )
    since = [seconds for caller in callers for start, seconds in caller.calls if start + seconds >= killed]
    p50, p99 = np.percentile(since, [50, 99])
    print(
        f"{target} SIGKILL -> Triton ready again after {back - killed:.1f} s, the gateway's first answer "
        f"{first - back:.2f} s later, a new call's {probe_answered - back:.2f} s later; "
        f"0 failed of {sum(len(caller.calls) for caller in callers)} calls; "
        f"latency of calls since the kill: p50 {p50:.2f} s, p99 {p99:.2f} s, max {max(since):.2f} s"
    )
    assert probe_answered - back <= NOTICED_WITHIN_S
    assert max(since) <= CAUGHT_WITHIN_S
