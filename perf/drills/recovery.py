"""Recovery test: kill each kind of process under `make serve` while requests flow; how soon does it serve?

    python -m perf.drills.recovery [--out DIR]
    make reliability

Runs ``python -m tools.launcher serve`` (what ``make serve`` runs) on model_repository/ with the tiny
checkpoints on free ports, keeps one embedding and one rerank request in flight at all times, and for
each stub kind (both preprocess and both model steps) and for tritonserver itself: SIGKILL, then the
time until readiness turns false, until the affected ensemble answers again, and how many requests
failed meanwhile. Then the embedding model's stub is killed again and again (each time once it serves) until
the watchdog gives up on it and the launcher restarts tritonserver: the time from that give-up to serving
again, and readiness meanwhile. Last, SIGTERM under the same load: how long the stop takes, its exit code,
and whether any stub or /dev/shm region is left. Results go to perf/results/<host>/<date>/recovery.{json,md}.
"""

from __future__ import annotations

import bisect
import datetime
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
from pathlib import Path
from typing import Any

from backend.protocol import EMBEDDING_ENSEMBLE, RERANKER_ENSEMBLE
from perf.lib.console import add_out_argument, code_block, command_parser
from perf.lib.paths import REPO
from perf.lib.record import Experiment
from tools.ports import free_ports
from tools.watchdog import live_stubs

STEPS = ("preprocess", "model")
SERVE_LINE = re.compile(r"tritonserver pid (?P<pid>\d+), shm prefix (?P<prefix>\S+),")
RESTART_LINE = "restarting tritonserver: the stub watchdog cannot repair it"
RELOADED_LINE = "watchdog: model {model} serves again"
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) launcher: (.*)$", re.M)
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


class Readiness:
    """/v2/health/ready polled every 50 ms: (time, status) of each answer."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.answers: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.answers.append((time.monotonic(), ready(self.base)))

    def between(self, start: float, end: float) -> list[int]:
        return [status for moment, status in self.answers if start <= moment <= end]

    def first_200_after(self, start: float) -> float | None:
        times = [moment for moment, status in self.answers]
        for index in range(bisect.bisect_left(times, start), len(self.answers)):
            if self.answers[index][1] == 200:
                return self.answers[index][0]
        return None

    def __enter__(self) -> Readiness:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _log_seconds(log: str, first: str, then: str) -> float | None:
    """Seconds between the last launcher line containing ``first`` and the next one containing ``then``,
    by the launcher's own timestamps."""
    when = lambda stamp: datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")  # noqa: E731
    lines = [(when(stamp), line) for stamp, line in LOG_TIME.findall(log)]
    starts = [index for index, (_, line) in enumerate(lines) if first in line]
    if not starts:
        return None
    begin = lines[starts[-1]][0]
    return next(
        (round((t - begin).total_seconds(), 2) for t, line in lines[starts[-1] + 1 :] if then in line), None
    )


def _since(start: float, end: float | None) -> float | None:
    return None if end is None else round(end - start, 2)


def _kill_once(log: Path, model: str) -> tuple[int, float, str]:
    """SIGKILL one stub of ``model``; (server pid, when, "restart" or "reload": what the launcher did)."""
    text = log.read_text()
    server_pid = int(SERVE_LINE.findall(text)[-1][0])
    counts = text.count(RESTART_LINE), text.count(RELOADED_LINE.format(model=model))

    def answer() -> str:
        now = log.read_text()
        if now.count(RESTART_LINE) > counts[0]:
            return "restart"
        return "reload" if now.count(RELOADED_LINE.format(model=model)) > counts[1] else ""

    killed = time.monotonic()
    os.kill(min(pid for pid, name in live_stubs(server_pid).items() if name == model), signal.SIGKILL)
    # The watchdog's backoff (2, 4, 8 s) comes before its reloads: wait for whichever answer it gives.
    if wait_until(lambda: answer() != "", 120.0, interval=0.02) is None:
        raise RuntimeError(f"neither a reload nor a restart after a SIGKILL of {model}; see {log}")
    return server_pid, killed, answer()


def kill_past_the_limit(base: str, log: Path, load: Load, model: str, ensemble: str) -> dict:
    """SIGKILL ``model``'s stub, and again each time it serves, until the watchdog gives up on it and the
    launcher restarts tritonserver; times from the last kill and from the give-up (the restart line)."""
    kills = 0
    with Readiness(base) as readiness:
        while True:
            server_pid, killed, answer = _kill_once(log, model)
            kills += 1
            if answer == "restart":
                break
            if wait_until(lambda: ready(base) == 200 and call(base, ensemble) == 200, 120.0) is None:
                raise RuntimeError(f"not serving after reload {kills}; see {log}")
        given_up = time.monotonic()
        gone = wait_until(lambda: not Path(f"/proc/{server_pid}").exists(), 120.0)
        back = wait_until(
            lambda: (
                int(SERVE_LINE.findall(log.read_text())[-1][0]) != server_pid
                and ready(base) == 200
                and call(base, ensemble) == 200
            ),
            300.0,
            interval=0.1,
        )
    stopping = readiness.between(given_up, gone or given_up)
    text = log.read_text()
    result = {
        "killed": f"{model} past the watchdog's limit",
        "kills": kills,
        "give_up_after_last_kill_s": round(given_up - killed, 2),
        "old_server_gone_after_give_up_s": _since(given_up, gone),
        "readiness_polls_while_it_stopped": len(stopping),
        "readiness_200_while_it_stopped": stopping.count(200),
        "readiness_200_again_after_give_up_s": _since(given_up, readiness.first_200_after(given_up)),
        "serving_again_after_give_up_s": _since(given_up, back),
        "by_log_give_up_to_restart_s": _log_seconds(text, RESTART_LINE, "starting tritonserver"),
        "by_log_give_up_to_ready_s": _log_seconds(text, RESTART_LINE, "serving on"),
        "failed_requests": load.failed_between(killed, back or time.monotonic()),
    }
    print(json.dumps(result), flush=True)
    time.sleep(2.0)
    return result


def kills_table(results: list[dict]) -> list[str]:
    """Each SIGKILL under load as a markdown table (also in reliability.md)."""
    return [
        "| SIGKILL of | readiness false after | serving again after | failed attempts (50 ms apart) |",
        "|---|---|---|---|",
        *(
            f"| {result['killed']} | {result['readiness_false_after_s']} s "
            f"| {result['serving_again_after_s']} s | {_counts(result['failed_requests'])} |"
            for result in results
        ),
    ]


def _counts(failed: dict[str, int]) -> str:
    return ", ".join(f"{model}: {count}" for model, count in sorted(failed.items())) or "0"


def stop_under_load(process: subprocess.Popen, log: Path, load: Load) -> dict[str, Any]:
    """SIGTERM of the launcher while requests flow: how long it takes and what it leaves behind."""
    server_pid, prefix = SERVE_LINE.findall(log.read_text())[-1]
    stopping = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=120)
    return {
        "stop_seconds": round(time.monotonic() - stopping, 2),
        "launcher_exit_code": code,
        "stubs_left": len(live_stubs(int(server_pid))),
        "shm_regions_left": len(list(Path("/dev/shm").glob(f"{prefix}*"))),
        "requests_failed_during_stop": load.failed_between(stopping, time.monotonic()),
    }


def write_report(experiment: Experiment, report: dict[str, Any]) -> None:
    experiment.write_json("recovery.json", report)
    past_limit, stop = report["stub_past_the_watchdog_limit"], report["stop_under_load"]
    lines = [
        *experiment.heading(
            f"Recovery under `make serve` ({os.cpu_count()} cores), {report['started']}", report
        ),
        "Tiny checkpoints, both ensembles, one embedding and one rerank request always in flight (HTTP). "
        f"Server ready {report['startup_seconds']} s after launch.",
        "",
        *kills_table(report["kills"]),
        "",
        f"SIGKILL of {past_limit['killed']}, each time once it served again: the watchdog reloaded it "
        f"{past_limit['kills'] - 1} times and gave up on kill {past_limit['kills']} "
        f"({past_limit['give_up_after_last_kill_s']} s after it), and the launcher restarted tritonserver. "
        f"From that give-up: the old server was gone after {past_limit['old_server_gone_after_give_up_s']} s "
        f"(readiness answered 200 to {past_limit['readiness_200_while_it_stopped']} of "
        f"{past_limit['readiness_polls_while_it_stopped']} polls 50 ms apart meanwhile); "
        f"/v2/health/ready 200 again after {past_limit['readiness_200_again_after_give_up_s']} s, "
        "the ensemble serving after "
        f"{past_limit['serving_again_after_give_up_s']} s (by the launcher's log: restart begun after "
        f"{past_limit['by_log_give_up_to_restart_s']} s, new server ready after "
        f"{past_limit['by_log_give_up_to_ready_s']} s). Failed attempts from the last kill: "
        f"{_counts(past_limit['failed_requests'])}.",
        "",
        f"SIGTERM under the same load: stopped in {stop['stop_seconds']} s, "
        f"exit code {stop['launcher_exit_code']}, "
        f"{stop['stubs_left']} stubs and {stop['shm_regions_left']} /dev/shm regions left; "
        f"failed attempts {_counts(stop['requests_failed_during_stop'])} (connections refused once the "
        "server stopped listening).",
        "",
        *code_block("Launcher log", report["launcher_log"]),
    ]
    experiment.write_markdown("recovery.md", lines, echo=True)


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("perf.drills.recovery", __doc__)
    add_out_argument(parser)
    args = parser.parse_args(argv)
    experiment = Experiment("perf.drills.recovery", argv, args.out)
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
            past_limit = kill_past_the_limit(
                base, log, load, f"{EMBEDDING_ENSEMBLE}_model", EMBEDDING_ENSEMBLE
            )
            stop = stop_under_load(process, log, load)
        print(json.dumps(stop), flush=True)
    finally:
        if process.poll() is None:
            process.kill()
    report = experiment.report(
        startup_seconds=startup,
        kills=results,
        stub_past_the_watchdog_limit=past_limit,
        stop_under_load=stop,
        launcher_log=[line for line in log.read_text().splitlines() if "launcher:" in line],
    )
    write_report(experiment, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
