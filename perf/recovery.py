"""Recovery test: kill each kind of process under `make serve` while requests flow; how soon does it serve?

    python -m perf.recovery [--out DIR]
    make reliability

Runs ``python -m tools.launcher serve`` (what ``make serve`` runs) on model_repository/ with the tiny
checkpoints on free ports, keeps one embedding and one rerank request in flight at all times, and for
each stub kind (both preprocess and both model steps) and for tritonserver itself: SIGKILL, then the
time until readiness turns false, until the affected ensemble answers again, and how many requests
failed meanwhile. Last, SIGTERM under the same load: how long the stop takes, its exit code, and whether
any stub or /dev/shm region is left. Results go to perf/results/<host>/<date>/recovery.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from backend.protocol import EMBEDDING_ENSEMBLE, RERANKER_ENSEMBLE
from tools.launcher import free_ports
from tools.watchdog import live_stubs

REPO = Path(__file__).resolve().parent.parent
STEPS = ("preprocess", "model")
SERVE_LINE = re.compile(r"tritonserver pid (?P<pid>\d+), shm prefix (?P<prefix>\S+),")
REQUESTS = {
    EMBEDDING_ENSEMBLE: {
        "inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": ["a short text to embed"]}]
    },
    RERANKER_ENSEMBLE: {
        "inputs": [
            {"name": "QUERY_TEXT", "shape": [1, 1], "datatype": "BYTES", "data": ["what is it?"]},
            {"name": "DOCUMENT_TEXT", "shape": [1, 1], "datatype": "BYTES", "data": ["a document"]},
        ]
    },
}
TARGETS = (
    *(
        (f"{ensemble}_{step}", ensemble)
        for ensemble in (EMBEDDING_ENSEMBLE, RERANKER_ENSEMBLE)
        for step in STEPS
    ),
    ("tritonserver", EMBEDDING_ENSEMBLE),
)


def call(base: str, model: str, timeout: float = 30.0) -> int:
    request = urllib.request.Request(
        f"{base}/v2/models/{model}/infer", data=json.dumps(REQUESTS[model]).encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def ready(base: str) -> int:
    try:
        with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2.0) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


class Load:
    """One request of each ensemble in flight all the time; (time, model, status) of each answer."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.answers: list[tuple[float, str, int]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(model,), daemon=True) for model in REQUESTS]

    def _run(self, model: str) -> None:
        while not self._stop.is_set():
            status = call(self.base, model)
            self.answers.append((time.monotonic(), model, status))
            if status != 200:
                time.sleep(0.05)  # a refused connection answers at once: do not spin

    def failed_between(self, start: float, end: float) -> dict[str, int]:
        counts: dict[str, int] = {}
        for moment, model, status in self.answers:
            if start <= moment <= end and status != 200:
                counts[model] = counts.get(model, 0) + 1
        return counts

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def wait_until(predicate, timeout: float, interval: float = 0.05) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(interval)
    return None


def kill_and_measure(base: str, log: Path, load: Load, target: str, ensemble: str) -> dict:
    server_pid = int(SERVE_LINE.findall(log.read_text())[-1][0])
    if target == "tritonserver":
        victim = server_pid
    else:
        victim = min(pid for pid, model in live_stubs(server_pid).items() if model == target)
    killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    not_ready = wait_until(lambda: ready(base) != 200, 30.0, interval=0.02)
    back = wait_until(lambda: ready(base) == 200 and call(base, ensemble) == 200, 300.0, interval=0.1)
    result = {
        "killed": target,
        "pid": victim,
        "readiness_false_after_s": None if not_ready is None else round(not_ready - killed, 2),
        "serving_again_after_s": None if back is None else round(back - killed, 2),
        "failed_requests": load.failed_between(killed, back or time.monotonic()),
    }
    print(json.dumps(result), flush=True)
    time.sleep(2.0)
    return result


def _counts(failed: dict[str, int]) -> str:
    return ", ".join(f"{model}: {count}" for model, count in sorted(failed.items())) or "0"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.recovery", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="default: perf/results/<host>/<date>")
    args = parser.parse_args(argv)
    command = "python -m perf.recovery " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.out is None:
        from perf.host import todays_results_dir

        args.out = todays_results_dir()
    args.out.mkdir(parents=True, exist_ok=True)
    http_port, grpc_port, metrics_port = free_ports(3)
    base = f"http://127.0.0.1:{http_port}"
    log = Path(f"/tmp/recovery-serve-{os.getpid()}.log")
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_PATH", "RERANKER_MODEL_PATH", "DEVICE")}
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "tools.launcher", "serve", "--no-gateway",
             "--model-repository", "model_repository",
             f"--http-port={http_port}", f"--grpc-port={grpc_port}", f"--metrics-port={metrics_port}"],
            cwd=REPO, stdout=output, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    results: list[dict] = []
    try:
        started = time.monotonic()
        if wait_until(lambda: ready(base) == 200, 900.0, interval=0.5) is None:
            raise RuntimeError(f"not ready; see {log}")
        startup = round(time.monotonic() - started, 1)
        with Load(base) as load:
            time.sleep(3.0)
            for target, ensemble in TARGETS:
                results.append(kill_and_measure(base, log, load, target, ensemble))
            server_pid = int(SERVE_LINE.findall(log.read_text())[-1][0])
            prefix = SERVE_LINE.findall(log.read_text())[-1][1]
            stopping = time.monotonic()
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=120)
            stop = {
                "stop_seconds": round(time.monotonic() - stopping, 2),
                "launcher_exit_code": code,
                "stubs_left": len(live_stubs(server_pid)),
                "shm_regions_left": len(list(Path("/dev/shm").glob(f"{prefix}*"))),
                "requests_failed_during_stop": load.failed_between(stopping, time.monotonic()),
            }
        print(json.dumps(stop), flush=True)
    finally:
        if process.poll() is None:
            process.kill()
    crash_lines = [line for line in log.read_text().splitlines() if "launcher:" in line]
    report = {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "startup_seconds": startup,
        "kills": results,
        "stop_under_load": stop,
        "launcher_log": crash_lines,
    }
    (args.out / "recovery.json").write_text(json.dumps(report, indent=2) + "\n")
    rows = [
        "| SIGKILL of | readiness false after | serving again after | failed attempts (50 ms apart) |",
        "|---|---|---|---|",
    ]
    for result in results:
        rows.append(
            f"| {result['killed']} | {result['readiness_false_after_s']} s "
            f"| {result['serving_again_after_s']} s | {_counts(result['failed_requests'])} |"
        )
    lines = [
        f"# Recovery under `make serve` ({os.cpu_count()} cores), {report['date']}",
        "",
        f"Command: `{command}`. Tiny checkpoints, both ensembles, one embedding and one rerank request",
        f"always in flight (HTTP). Server ready {startup} s after launch.",
        "",
        *rows,
        "",
        f"SIGTERM under the same load: stopped in {stop['stop_seconds']} s, "
        f"exit code {stop['launcher_exit_code']}, "
        f"{stop['stubs_left']} stubs and {stop['shm_regions_left']} /dev/shm regions left; "
        f"failed attempts {_counts(stop['requests_failed_during_stop'])} (connections refused once the "
        "server stopped listening).",
        "",
        "Launcher log:",
        "",
        "```",
        *crash_lines,
        "```",
        "",
    ]
    (args.out / "recovery.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
