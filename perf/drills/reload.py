"""Reload windows seen by callers: SIGKILL a stub under steady load; what do clients see?

    python -m perf.drills.reload [--target qwen3_vl_embedding_model] [--threads 3] [--retries 4] [--gateway]
                          [--reload-wait 60] [--after 15] [--out DIR]

Runs ``python -m tools.launcher serve`` (tritonserver + the stub watchdog, and with ``--gateway`` the
gateway) on model_repository/ with the tiny checkpoints on free ports. ``--threads`` threads per caller
embed one short text each, again and again, through the client library (HTTP and gRPC) and, with
``--gateway``, through the gateway's /v1/embeddings; once steady, the stub named ``--target`` (or
``tritonserver``) is SIGKILLed. Reports per caller: requests, failures by status and message, the latency of
successes before and after the kill (p50/p99/max) and the time until the first success after it; every
vector is compared with the one seen before the kill. ``--reload-wait 0`` gives the clients' behaviour before
issue 19 (only UNAVAILABLE and lost connections retried, ``--retries`` times); with ``--retries 0`` too, the
raw errors. Each run appends its report to ``reload.jsonl`` in ``--out`` (default: today's results directory).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np

from perf.lib.console import add_out_argument, command_parser
from perf.lib.paths import REPO
from perf.lib.record import Experiment
from tools.ports import free_ports
from tools.watchdog import live_stubs

TEXT = "a short text to embed"
SERVE_LINE = "launcher: serving on"


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


class Caller:
    """``threads`` threads calling ``call()`` in a loop; (start, seconds, error or None) per request."""

    def __init__(self, name: str, make_call, threads: int) -> None:
        self.name = name
        self.make_call = make_call
        self.records: list[tuple[float, float, str | None]] = []
        self.vectors: list[np.ndarray] = []
        self.reference: np.ndarray | None = None
        self.mismatches = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        call, close = self.make_call()
        try:
            while not self._stop.is_set():
                start = time.monotonic()
                try:
                    vector = call()
                except Exception as error:  # noqa: BLE001 - recorded
                    status = getattr(error, "status", None)
                    status = status() if callable(status) else status
                    self.records.append((start, time.monotonic() - start, f"{status}: {str(error)[:160]}"))
                    time.sleep(0.05)
                    continue
                self.records.append((start, time.monotonic() - start, None))
                if self.reference is None:
                    self.reference = vector
                elif not np.array_equal(vector, self.reference):
                    self.mismatches += 1
        finally:
            close()

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def report(self, killed: float) -> dict:
        # Before: answered before the kill; around: answered after it (the ones it held included).
        before = [s for t, s, e in self.records if e is None and t + s < killed]
        after = [s for t, s, e in self.records if e is None and t + s >= killed]
        errors = Counter(e for _, _, e in self.records if e is not None)
        firsts = [t + s for t, s, e in self.records if e is None and t + s > killed]
        return {
            "caller": self.name,
            "requests": len(self.records),
            "failed": sum(errors.values()),
            "errors": dict(errors.most_common(6)),
            "latency_before_s": {"p50": _percentile(before, 50), "p99": _percentile(before, 99)},
            "latency_around_kill_s": {
                "p50": _percentile(after, 50),
                "p99": _percentile(after, 99),
                "max": round(max(after), 3) if after else None,
            },
            "vector_mismatches": self.mismatches,
            "first_answer_after_kill_s": round(min(firsts) - killed, 3) if firsts else None,
        }


def client_caller(url: str, protocol: str, retries: int, reload_wait: float):
    from qwen3vl_client import EmbeddingClient

    def make():
        client = EmbeddingClient(url, protocol, retries=retries, timeout=60.0, reload_wait=reload_wait)
        return (lambda: client.embed([TEXT])[0]), client.close

    return make


def gateway_caller(base: str):
    body = json.dumps({"model": "qwen3_vl_embedding", "input": [TEXT]}).encode()

    def make():
        def call() -> np.ndarray:
            request = urllib.request.Request(
                f"{base}/v1/embeddings", data=body, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    return np.array(json.loads(response.read())["data"][0]["embedding"], dtype=np.float32)
            except urllib.error.HTTPError as error:
                message = error.read()[:200].decode(errors="replace")
                retry_after = error.headers.get("Retry-After")
                raise RuntimeError(f"HTTP {error.code} Retry-After={retry_after} {message}") from None

        return call, lambda: None

    return make


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            return response.status == 200
    except OSError:
        return False


class Readiness(threading.Thread):
    """Triton's /v2/health/ready every 50 ms: when it answers 200 again after a kill."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.answers: list[tuple[float, bool]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            self.answers.append((time.monotonic(), ready(self.url)))

    def back_after(self, since: float) -> float | None:
        """When it answered 200 again after having been not ready since ``since``."""
        down = next((t for t, ok in self.answers if t >= since and not ok), None)
        if down is None:
            return None
        return next((t for t, ok in self.answers if t > down and ok), None)


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("perf.drills.reload", __doc__)
    parser.add_argument("--target", default="qwen3_vl_embedding_model")
    parser.add_argument("--threads", type=int, default=3)
    parser.add_argument("--retries", type=int, default=4)
    parser.add_argument(
        "--reload-wait", type=float, default=60.0, help="the clients' reload_wait (0: as before issue 19)"
    )
    parser.add_argument("--gateway", action="store_true")
    parser.add_argument("--after", type=float, default=15.0, help="seconds of load after the kill")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    experiment = Experiment("perf.drills.reload", argv, args.out)
    results = measure(args.target, args.threads, args.retries, args.reload_wait, args.gateway, args.after)
    report = experiment.report(**results)
    print(json.dumps(report, indent=1), flush=True)
    with (experiment.out / "reload.jsonl").open("a") as lines:
        lines.write(json.dumps(report) + "\n")
    return 0


def measure(target: str, threads: int, retries: int, reload_wait: float, gateway: bool, after: float) -> dict:
    """One kill under load against a fresh `make serve` (the reliability phase runs one per target)."""
    http_port, grpc_port, metrics_port, gateway_port = free_ports(4)
    log = Path(f"/tmp/reload-serve-{os.getpid()}.log")
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_PATH", "RERANKER_MODEL_PATH", "DEVICE")}
    env["GATEWAY_PORT"] = str(gateway_port)
    command = [sys.executable, "-m", "tools.launcher", "serve", "--model-repository", "model_repository",
               f"--http-port={http_port}", f"--grpc-port={grpc_port}",
               f"--metrics-port={metrics_port}"]  # fmt: skip
    if not gateway:
        command.append("--no-gateway")
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT, env=env)
    callers: list[Caller] = []
    try:
        deadline = time.monotonic() + 600
        gateway_base = f"http://127.0.0.1:{gateway_port}"
        while (
            not ready(f"http://127.0.0.1:{http_port}/v2/health/ready")
            or (gateway and not ready(f"{gateway_base}/health"))
            or SERVE_LINE not in log.read_text()  # written a moment after readiness
        ):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"not ready; see {log}")
            time.sleep(0.5)
        callers = [
            Caller(
                "client http",
                client_caller(f"127.0.0.1:{http_port}", "http", retries, reload_wait),
                threads,
            ),
            Caller(
                "client grpc",
                client_caller(f"127.0.0.1:{grpc_port}", "grpc", retries, reload_wait),
                threads,
            ),
        ]
        if gateway:
            callers.append(Caller("gateway", gateway_caller(gateway_base), threads))
        readiness = Readiness(f"http://127.0.0.1:{http_port}/v2/health/ready")
        readiness.start()
        for caller in callers:
            caller.start()
        time.sleep(5.0)
        server_pid = int(re.findall(r"tritonserver pid (\d+), shm prefix", log.read_text())[-1])
        if target == "tritonserver":
            victim = server_pid
        else:
            victim = min(pid for pid, model in live_stubs(server_pid).items() if model == target)
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        time.sleep(after)
        for caller in callers:
            caller.stop()
        readiness.stop.set()
        back = readiness.back_after(killed)
        reports = [caller.report(killed) for caller in callers]
        for report in reports:
            first = report["first_answer_after_kill_s"]
            ready_again = None if back is None else back - killed
            report["first_answer_after_triton_ready_s"] = (
                None if first is None or ready_again is None else round(first - ready_again, 3)
            )
        return {
            "killed": target,
            "retries": retries,
            "reload_wait": reload_wait,
            "triton_ready_again_after_kill_s": None if back is None else round(back - killed, 3),
            "callers": reports,
            "launcher": [line for line in log.read_text().splitlines() if "launcher:" in line][-8:],
        }
    finally:
        for caller in callers:
            caller._stop.set()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


if __name__ == "__main__":
    sys.exit(main())
