"""One measured point: perf_analyzer's run, with the server's statistics, metrics and CPU use read around
it, into a `Point`; its CSV row appended to the run's merged CSV."""

from __future__ import annotations

import contextlib
import csv
import os
import time
from pathlib import Path

from perf.lib.perf_analyzer import CSV_FIELDS_MS, Measurement, read_csv_row, run_perf_analyzer
from perf.lib.pipelines import ENSEMBLE, pipeline_of
from perf.lib.points import Point
from perf.lib.sampling import own_cpu_seconds
from perf.lib.server_stats import (
    cpu_seconds_by_role,
    custom_delta,
    nudge,
    settle,
    snapshot,
    stats_delta,
)
from perf.lib.servers import Endpoint


def measure(
    endpoint: Endpoint,
    workload: str,
    data: Path,
    protocol: str,
    concurrency: int,
    measurement: Measurement,
    run_dir: Path,
    tag: str,
    expected_throughput: float = 0.0,
    ensemble: str = ENSEMBLE,
) -> Point:
    """One perf_analyzer point plus what the server's statistics and metrics say happened meanwhile."""
    pipeline = pipeline_of(ensemble)
    point = Point(
        model=endpoint.label,
        workload=workload,
        protocol=protocol,
        concurrency=concurrency,
        tag=tag,
        ensemble=pipeline.ensemble,
    )
    name = f"{tag}-{endpoint.label}-{workload}-{protocol}-c{concurrency}"
    csv_path = run_dir / "raw" / f"{name}.csv"
    started = time.monotonic()
    server_pid = getattr(endpoint.server, "pid", None)
    cpu_before = cpu_seconds_by_role(server_pid) if server_pid else {}
    client_before = own_cpu_seconds()[1]
    before = snapshot(endpoint)
    point.mode, point.error = run_perf_analyzer(
        endpoint,
        protocol,
        data,
        concurrency,
        measurement,
        csv_path,
        run_dir / "raw" / f"{name}.log",
        expected_throughput,
        pipeline.ensemble,
    )
    point.seconds = time.monotonic() - started
    point.load1 = os.getloadavg()[0]
    if server_pid:
        cpu_after = cpu_seconds_by_role(server_pid)
        point.cpu = {
            role: (cpu_after[role] - cpu_before.get(role, 0.0)) / point.seconds for role in cpu_after
        }
    point.cpu["perf_analyzer"] = (own_cpu_seconds()[1] - client_before) / point.seconds
    p99_s = 2.0
    if not point.error:
        with contextlib.suppress(KeyError, ValueError, IndexError):
            p99_s = float(read_csv_row(csv_path)[1]["p99 latency"]) / 1e6
    settle(endpoint, quiet_s=max(0.5, 1.5 * p99_s), pipeline=pipeline)
    nudge_rows = nudge(endpoint, pipeline)
    after = snapshot(endpoint)
    point.stages = {name: row for name, row in stats_delta(before, after).items() if name in pipeline.models}
    point.custom = custom_delta(before, after, pipeline)
    point.custom.nudge_rows = nudge_rows
    point.custom.seconds = point.seconds
    if not point.error:
        header, row = read_csv_row(csv_path)
        point.ok = True
        point.throughput = float(row["Inferences/Second"])
        for column, key in CSV_FIELDS_MS.items():
            if column in row and row[column] != "":
                value = float(row[column]) / 1000.0
                if hasattr(point, key):
                    setattr(point, key, value)
                else:
                    point.client[key] = value
        if not point.avg_ms:
            point.avg_ms = sum(point.client.values())
        merged = run_dir / "csv" / f"{tag}-{endpoint.label}-{workload}-{protocol}.csv"
        fresh = not merged.exists()
        with merged.open("a", newline="") as f:
            writer = csv.writer(f)
            if fresh:
                writer.writerow(header)
            writer.writerow([row[column] for column in header])
        point.csv = str(merged.relative_to(run_dir))
    return point
