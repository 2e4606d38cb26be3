"""A closed-loop HTTP load on the gateway's /v1/embeddings and what it is measured with: the target (Triton
and gateway addresses, their process groups), the CPU each process used, Triton's statistics of the
embedding steps over a run, and one run's outcome (`Side`). perf.gateway_bench compares it with
perf_analyzer straight to Triton; the coalescing experiment pairs two gateways with it."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import time
from dataclasses import dataclass, field

from backend.protocol import EMBEDDING_ENSEMBLE
from perf.gateway_stack import EMBEDDING_NAME, GatewayStack
from perf.lib.sampling import group_cpu_seconds, own_cpu_seconds

ENSEMBLE = EMBEDDING_ENSEMBLE
STEPS = ("qwen3_vl_embedding_preprocess", "qwen3_vl_embedding_model")
WARMUP_S = 2.0


@dataclass(frozen=True)
class Target:
    """What is measured: Triton's gRPC address and the gateway's URL; the process groups when started here
    (servers started elsewhere are measured without their CPU use)."""

    grpc_url: str
    base_url: str
    server_pgid: int | None = None
    gateway_pgid: int | None = None
    http_url: str = ""  # Triton's HTTP address, for its statistics

    @classmethod
    def of(cls, stack: GatewayStack) -> Target:
        """A started stack (perf.gateway_stack declares its server and gateway None until then)."""
        server, gateway = stack.server, stack.gateway
        if server is None or gateway is None:
            raise RuntimeError("the gateway stack is not started")
        return cls(server.grpc_url, stack.base_url, server.pid, gateway.pid, server.http_url)


class CpuMeter:
    """Cores used on average by the server's group, the gateway's group, this client and perf_analyzer."""

    def __init__(self, target: Target):
        self.target = target

    def read(self) -> dict[str, float]:
        client, children = own_cpu_seconds()
        values = {"http client": client, "perf_analyzer": children, "time": time.monotonic()}
        if self.target.server_pgid:
            values["tritonserver + stubs"] = group_cpu_seconds(self.target.server_pgid)
        if self.target.gateway_pgid:
            values["gateway"] = group_cpu_seconds(self.target.gateway_pgid)
        return values

    @staticmethod
    def cores(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        seconds = after["time"] - before["time"]
        return {k: round((after[k] - before[k]) / seconds, 3) for k in before if k != "time"}


@dataclass
class Side:
    path: str  # "direct (perf_analyzer gRPC)" | "gateway (HTTP /v1/embeddings)"
    concurrency: int
    repeat: int
    ok: bool = False
    throughput: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    avg_ms: float = 0.0
    seconds: float = 0.0
    requests: int = 0
    errors: int = 0
    cpu_cores: dict = field(default_factory=dict)
    load1: float = 0.0  # 1-minute load average at the end: other work on the machine shows here
    stages: dict = field(default_factory=dict)  # Triton's statistics of the ensemble's steps over the run
    rows_per_call: float = 0.0  # gateway runs: rows per Triton call (above 1: requests were merged)
    error: str = ""


def server_snapshot(target: Target):
    if not target.http_url:
        return None
    from perf.lib.server_stats import snapshot
    from perf.lib.servers import Endpoint

    return snapshot(Endpoint("measured", target.http_url, target.grpc_url, ""))


def stage_summary(before, after) -> dict[str, dict[str, float]]:
    """Rows per execute, queue and compute ms per request of each step Triton ran during the run: whether
    the two paths fed the server alike."""
    if before is None or after is None:
        return {}
    from perf.lib.server_stats import stats_delta

    return {
        name: {
            "rows_per_execute": round(stage.rows_per_execute, 2),
            "queue_ms": round(stage.queue_ms, 2),
            "compute_ms": round(stage.compute_ms, 2),
        }
        for name, stage in stats_delta(before, after).items()
        if stage.executions and name in STEPS
    }


def request_bodies(texts: list[str], model: str = EMBEDDING_NAME) -> list[bytes]:
    """What `vllm bench serve --backend openai-embeddings` sends for one text."""
    return [
        json.dumps({"model": model, "input": text, "truncate_prompt_tokens": -1}).encode() for text in texts
    ]


async def _closed_loop(url: str, bodies: list[bytes], concurrency: int, warmup_s: float, measure_s: float):
    import aiohttp

    latencies: list[float] = []
    statuses: collections.Counter[int] = collections.Counter()
    failures: collections.Counter[str] = collections.Counter()
    next_body = 0
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.monotonic()
        measure_from, stop_at = start + warmup_s, start + warmup_s + measure_s

        async def worker() -> None:
            nonlocal next_body
            while True:
                sent = time.monotonic()
                if sent >= stop_at:
                    return
                body = bodies[next_body % len(bodies)]
                next_body += 1
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        status = response.status
                except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                    failures[type(error).__name__] += 1
                    continue
                done = time.monotonic()
                if measure_from <= done <= stop_at:
                    statuses[status] += 1
                    if status == 200:
                        latencies.append(done - sent)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, statuses, failures


def call_rows(base_url: str) -> tuple[float, float]:
    """(Triton calls, rows) the gateway has counted so far (gateway_triton_call_rows), or zeros."""
    import urllib.request

    calls = rows = 0.0
    try:
        with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return calls, rows
    label = f'model="{ENSEMBLE}"'
    for line in text.splitlines():
        if line.startswith("gateway_triton_call_rows_count{") and label in line:
            calls = float(line.rsplit(" ", 1)[1])
        elif line.startswith("gateway_triton_call_rows_sum{") and label in line:
            rows = float(line.rsplit(" ", 1)[1])
    return calls, rows


def gateway_environment() -> list[str]:
    """The gateway settings this run changed from their defaults (GATEWAY_* in the environment)."""
    return sorted(f"{name}={value}" for name, value in os.environ.items() if name.startswith("GATEWAY_"))


def _percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def run_gateway(
    target: Target,
    meter: CpuMeter,
    bodies: list[bytes],
    concurrency: int,
    repeat: int,
    measure_s: float,
) -> Side:
    side = Side("gateway (HTTP /v1/embeddings)", concurrency, repeat)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    url = f"{target.base_url}/v1/embeddings"
    before, stats_before = meter.read(), server_snapshot(target)
    calls_before, rows_before = call_rows(target.base_url)
    started = time.monotonic()
    latencies, statuses, failures = asyncio.run(_closed_loop(url, bodies, concurrency, WARMUP_S, measure_s))
    after = meter.read()
    calls, rows = call_rows(target.base_url)
    side.rows_per_call = round((rows - rows_before) / max(calls - calls_before, 1.0), 2)
    side.seconds = time.monotonic() - started
    side.cpu_cores = meter.cores(before, after)
    side.stages = stage_summary(stats_before, server_snapshot(target))
    side.load1 = round(os.getloadavg()[0], 2)
    side.requests = len(latencies)
    side.errors = sum(count for status, count in statuses.items() if status != 200) + sum(failures.values())
    if side.errors:
        side.error = f"statuses {dict(statuses)}, failures {dict(failures)}"
    latencies.sort()
    side.ok = bool(latencies) and not side.errors
    side.throughput = len(latencies) / measure_s
    side.p50_ms, side.p90_ms, side.p99_ms = (1000 * _percentile(latencies, q) for q in (0.5, 0.9, 0.99))
    side.avg_ms = 1000 * sum(latencies) / max(len(latencies), 1)
    return side
