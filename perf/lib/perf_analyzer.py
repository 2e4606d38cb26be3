"""Driving perf_analyzer for one point: stable time windows first, a fixed request count (sized from the
rate seen) when they do not settle, a hung --request-count run cut and retried once; and reading its CSV."""

from __future__ import annotations

import csv
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from perf.lib.pipelines import ENSEMBLE
from perf.lib.servers import Endpoint


@dataclass
class Measurement:
    """How perf_analyzer measures one point. `auto`: stable time windows, falling back to one fixed request
    count when the windows do not settle (2 shared cores are noisy); `count`: a fixed request count only."""

    mode: str = "auto"  # auto | windows | count
    interval_ms: int = 3000
    stability: int = 50
    max_trials: int = 5
    point_seconds: float = 8.0  # target length of a count-mode measurement
    request_count: int = 0  # count mode: fixed number of requests (0 = from point_seconds)
    timeout_s: float = 300.0


def perf_analyzer_binary() -> str:
    candidate = Path(sys.prefix) / "bin" / "perf_analyzer"
    return str(candidate) if candidate.exists() else "perf_analyzer"


def perf_analyzer_env() -> dict[str, str]:
    from tools.triton_install import (
        default_runtime_dir,
        find_triton,
        prepare_runtime_dir,
    )
    from tools.triton_install import (
        perf_analyzer_env as launcher_env,
    )

    install = find_triton()
    return launcher_env(prepare_runtime_dir(default_runtime_dir(), install), install)


# perf_analyzer's CSV columns (microseconds) -> the point's fields or `client` keys (milliseconds).
CSV_FIELDS_MS = {
    "p50 latency": "p50_ms",
    "p90 latency": "p90_ms",
    "p95 latency": "p95_ms",
    "p99 latency": "p99_ms",
    "Avg latency": "avg_ms",
    "Client Send": "client_send_ms",
    "Network+Server Send/Recv": "network_ms",
    "Server Queue": "server_queue_ms",
    "Server Compute Input": "server_compute_input_ms",
    "Server Compute Infer": "server_compute_infer_ms",
    "Server Compute Output": "server_compute_output_ms",
    "Client Recv": "client_recv_ms",
}


def read_csv_row(path: Path) -> tuple[list[str], dict[str, str]]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    header, values = rows[0], rows[1]
    return header, dict(zip(header, values))


def read_csv_latency_s(path: Path) -> float:
    """Mean client latency of a perf_analyzer CSV row: the sum of its stage columns, in seconds."""
    _, row = read_csv_row(path)
    parts = [c for c in CSV_FIELDS_MS if c.startswith(("Client", "Network", "Server"))]
    return sum(float(row[c]) for c in parts if row.get(c)) / 1e6


def _last_throughput(text: str) -> float:
    found = re.findall(r"[Tt]hroughput: ([0-9.]+) infer/sec", text)
    return float(found[-1]) if found else 0.0


def last_throughput(log_path: Path) -> float:
    """The last rate a perf_analyzer log printed (a settled result or, with -v, a window's)."""
    return _last_throughput(_read(log_path))


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _error_line(text: str) -> str:
    for line in text.splitlines():
        if "error" in line.lower() or "failed" in line.lower():
            return line.strip()[:300]
    return ""


def time_window_args(measurement: Measurement) -> list[str]:
    """perf_analyzer's options for a sweep point measured in time windows (also in the plain command lines
    perf.run prints for users)."""
    return [
        "--measurement-mode",
        "time_windows",
        "-p",
        str(measurement.interval_ms),
        "-s",
        str(measurement.stability),
        "-r",
        str(measurement.max_trials),
    ]


def target_args(ensemble: str, endpoint: Endpoint, protocol: str, data: Path) -> list[str]:
    """What perf_analyzer sends and where: the ensemble, the server's address over `protocol`, the data."""
    return ["-m", ensemble, "-u", endpoint.url(protocol), "-i", protocol, "--input-data", str(data)]


def run_perf_analyzer(
    endpoint: Endpoint,
    protocol: str,
    data: Path,
    concurrency: int,
    measurement: Measurement,
    csv_path: Path,
    log_path: Path,
    expected_throughput: float = 0.0,
    ensemble: str = ENSEMBLE,
    extra_args: Sequence[str] = (),
) -> tuple[str, str]:
    """Run one measurement; returns (mode used, error or ""). The CSV lands at csv_path on success.
    `extra_args`: more perf_analyzer options (e.g. `-b 32`: rows per request, from successive data steps)."""
    base = [
        perf_analyzer_binary(),
        *target_args(ensemble, endpoint, protocol, data),
        *extra_args,
        "--concurrency-range",
        f"{concurrency}:{concurrency}",
        "-f",
        str(csv_path),
    ]
    windows = time_window_args(measurement)
    env = perf_analyzer_env()
    error = ""
    with log_path.open("a") as out:
        hung: list[bool] = []

        def attempt(extra: list[str]) -> tuple[bool, str]:
            command = base + extra
            out.write(f"$ {' '.join(command)}\n")
            out.flush()
            csv_path.unlink(missing_ok=True)
            try:
                result = subprocess.run(
                    command,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    timeout=measurement.timeout_s,
                    start_new_session=True,
                )
                text, returncode = result.stdout, result.returncode
            except subprocess.TimeoutExpired as timeout:
                raw = timeout.stdout or b""
                text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
                returncode = -signal.SIGKILL
                hung.append(True)
            out.write(text + "\n")
            out.flush()
            if returncode == 0 and csv_path.exists():
                return True, text
            return False, _error_line(text) or f"perf_analyzer exited with {returncode}"

        def counted(requests: int) -> tuple[bool, str]:
            hung.clear()
            ok, text = attempt(["--request-count", str(requests)])
            if not ok and hung:
                # perf_analyzer 2.50 sometimes never exits in --request-count mode although the server
                # answered every request (about 1 run in 15 here; time windows never hung): once more.
                out.write("perf_analyzer hung in --request-count mode; running it once more\n")
                ok, text = attempt(["--request-count", str(requests)])
            return ok, text

        if measurement.mode in ("auto", "windows"):
            # -v prints every window, so a run that never settles still says how fast the server went.
            ok, text = attempt(windows + ["-v"])
            if ok:
                return "windows", ""
            error = text
            if measurement.mode == "windows":
                return "windows", error
            expected_throughput = _last_throughput(_read(log_path)) or expected_throughput
        # A fixed request count: one measurement, no stability check. perf_analyzer's throughput is only
        # right when the run lasts well over a second, so an unknown rate is probed first (Little's law:
        # throughput = concurrency / mean latency) and the real run sized from it.
        if measurement.request_count:
            count = measurement.request_count
        else:
            if not expected_throughput:
                ok, text = counted(max(4 * concurrency, 8))
                if not ok:
                    return "count", text
                expected_throughput = concurrency / max(read_csv_latency_s(csv_path), 1e-6)
            count = max(2 * concurrency, 16, int(expected_throughput * measurement.point_seconds))
        ok, text = counted(count)
        return "count", "" if ok else text
