"""A stub SIGKILLed under load is invisible to callers of the client library (issue 19, "reloads invisible to
clients"): `python -m tools.launcher serve` with its watchdog serves tests/integration/reload_repository (a
stand-in embedding ensemble that starts in about a second); a few threads embed through the client library
(HTTP, gRPC, asyncio over gRPC) while the step's stub is killed and the watchdog reloads the model. No call
fails, and every vector is the one the text always gets. perf/reload.py measures the same on the real model
and through the gateway.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import cast

import numpy as np

from qwen3vl_client import AsyncEmbeddingClient, EmbeddingClient
from qwen3vl_client.options import Transport
from tests.conftest import REPO
from tools.ports import free_ports
from tools.watchdog import live_stubs

REPOSITORY = Path(__file__).resolve().parent / "reload_repository"
MODEL, STEP = "stand_in_embedding", "stand_in_embedding_model"
RELOADED = f"watchdog: model {STEP} serves again"
SERVE_LINE = re.compile(r"tritonserver pid (\d+), shm prefix")


def expected(text: str) -> np.ndarray:
    """What the stand-in step answers for ``text`` (its model.py)."""
    return (
        np.frombuffer(hashlib.sha256(text.encode()).digest(), dtype=np.uint32)[:8].astype(np.float32) / 2**32
    )


def ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2.0) as response:
            return response.status == 200
    except OSError:
        return False


def wait_for(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class Caller(threading.Thread):
    """Embeds two texts per call through its own client until stopped; every answer checked."""

    def __init__(self, number: int, url: str, protocol: str) -> None:
        super().__init__(daemon=True)
        self.number, self.url, self.protocol = number, url, protocol
        self.calls: list[tuple[float, float]] = []  # (start, seconds) of each successful call
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        if self.protocol.startswith("asyncio "):
            asyncio.run(self._run_async(self.protocol.split()[1]))
            return
        with EmbeddingClient(self.url, self.protocol, model=MODEL, timeout=30.0) as client:
            count = 0
            while not self.stop.is_set():
                texts = self._texts(count)
                count += 1
                started = time.monotonic()
                try:
                    got = client.embed(texts)
                except Exception as error:  # noqa: BLE001 - what the test counts
                    self.failures.append(f"{type(error).__name__}: {error}")
                    continue
                self._check(started, texts, got)

    async def _run_async(self, protocol: str) -> None:
        transport = cast(Transport, protocol)
        async with AsyncEmbeddingClient(self.url, transport, model=MODEL, timeout=30.0) as client:
            count = 0
            while not self.stop.is_set():
                texts = self._texts(count)
                count += 1
                started = time.monotonic()
                try:
                    got = await client.embed(texts)
                except Exception as error:  # noqa: BLE001 - what the test counts
                    self.failures.append(f"{type(error).__name__}: {error}")
                    continue
                self._check(started, texts, got)

    def _texts(self, count: int) -> list[str]:
        return [f"caller {self.number} text {count % 7}", f"caller {self.number} call {count}"]

    def _check(self, started: float, texts: list[str], got: np.ndarray) -> None:
        self.calls.append((started, time.monotonic() - started))
        if not np.array_equal(got, np.stack([expected(text) for text in texts])):
            self.failures.append(f"wrong vectors for {texts}")


def test_a_stub_killed_under_load_fails_no_call_of_the_client_library(tmp_path):
    http_port, grpc_port, metrics_port = free_ports(3)
    base = f"http://127.0.0.1:{http_port}"
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "tools.launcher", "serve", "--no-gateway",
             f"--model-repository={REPOSITORY}", f"--http-port={http_port}", f"--grpc-port={grpc_port}",
             f"--metrics-port={metrics_port}", "--exit-timeout-secs=5"],
            cwd=REPO, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    callers: list[Caller] = []
    server_pid = None
    try:
        # Ready, and the launcher has said which server it runs (the line may come a moment after readiness).
        assert wait_for(lambda: ready(base) and SERVE_LINE.search(log.read_text()), 60.0), log.read_text()
        server_pid = int(SERVE_LINE.findall(log.read_text())[-1])
        callers = [
            Caller(0, f"127.0.0.1:{http_port}", "http"),
            Caller(1, f"127.0.0.1:{http_port}", "http"),
            Caller(2, f"127.0.0.1:{grpc_port}", "grpc"),
            Caller(3, f"127.0.0.1:{grpc_port}", "asyncio grpc"),
        ]
        for caller in callers:
            caller.start()
        assert wait_for(lambda: all(len(caller.calls) >= 5 for caller in callers), 30.0)
        (stub,) = [pid for pid, model in live_stubs(server_pid).items() if model == STEP]
        killed = time.monotonic()
        os.kill(stub, signal.SIGKILL)
        assert wait_for(lambda: RELOADED in log.read_text(), 40.0, interval=0.05), log.read_text()
        reloaded = time.monotonic()
        # Every caller is served again after the reload.
        assert wait_for(lambda: all(caller.calls[-1][0] > reloaded for caller in callers), 20.0)
    finally:
        for caller in callers:
            caller.stop.set()
        for caller in callers:
            caller.join(timeout=60)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        if server_pid is not None:
            try:
                os.killpg(server_pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    assert [failure for caller in callers for failure in caller.failures] == []
    since = [seconds for caller in callers for start, seconds in caller.calls if start + seconds >= killed]
    p50, p99 = np.percentile(since, [50, 99])
    print(
        f"stub SIGKILL -> reloaded in {reloaded - killed:.1f} s; 0 failed of "
        f"{sum(len(caller.calls) for caller in callers)} calls; latency of calls since the kill: "
        f"p50 {p50:.2f} s, p99 {p99:.2f} s, max {max(since):.2f} s"
    )
