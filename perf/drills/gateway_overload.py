"""Overload through the gateway: fast 503s for the excess, bounded memory, and the p99 of admitted requests
against the unloaded p99, for several admission policies in one run.

    python -m perf.drills.gateway_overload [--multiple 4] [--seconds 30] [--concurrency 16,64]
                                    [--policies fifo,lifo,latency2] [--out DIR]

One tritonserver (the embedding ensemble, tiny checkpoint unless MODEL_PATH is set); for each policy a fresh
gateway (``python -m gateway`` with that policy's GATEWAY_* settings) in front of it, and one asyncio HTTP
client (aiohttp, keep-alive pool, bodies built beforehand so that it spends little of the shared cores)
posting single ~200-token texts to /v1/embeddings:

1. unloaded: one request at a time;
2. capacity: a closed loop with each of ``--concurrency`` requests in flight;
3. overload: an open loop at ``--multiple`` x the policy's best capacity (or ``--rate``) for
   ``--seconds`` (requests start on schedule whatever the answers);
4. after: one at a time again.

Per phase: answers by status, OK p50/p99, refusal (503) p50/p99, RSS of tritonserver's process group and
of the gateway (start / peak / end), throughput, CPU seconds of the server, the gateway and the client; per
policy the gateway's counters. Ratios (admitted p99 under overload / unloaded p99) are taken within one
policy's run. Writes gateway_overload.{json,md} into today's results directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import re
import resource
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from perf.gateway_stack import TINY_EMBEDDING, GatewayProcess, shown_path
from perf.lib import loops
from perf.lib.console import add_out_argument, command_parser, log, parse_list, table
from perf.lib.record import Experiment
from perf.lib.sampling import RssSampler, group_cpu_seconds, percentiles

# name -> (what it is, the gateway's environment)
POLICIES: dict[str, tuple[str, dict[str, str]]] = {
    "fifo": (
        "first come first served, rate-following bound (before this change)",
        {"GATEWAY_BURST_SECONDS": "0"},
    ),
    "lifo": ("adaptive LIFO + overload shedding, rate-following bound (default)", {}),
    "latency2": (
        "adaptive LIFO + overload shedding + latency target 2x",
        {"GATEWAY_LATENCY_TARGET_RATIO": "2"},
    ),
    "latency1.5": (
        "adaptive LIFO + overload shedding + latency target 1.5x",
        {"GATEWAY_LATENCY_TARGET_RATIO": "1.5"},
    ),
    "latency-profile": (
        "latency target 1.25x, overload told from a burst after 1 s (README: the latency profile)",
        {"GATEWAY_LATENCY_TARGET_RATIO": "1.25", "GATEWAY_BURST_SECONDS": "1"},
    ),
}
# ~200 tokens of plain English; a per-request number keeps requests distinct.
SENTENCE = "The quick brown fox jumps over the lazy dog while the river runs past the old mill. "
BODIES = 4096
METRICS_EVERY_S = 0.5
HEADERS = {"Content-Type": "application/json"}
# Requests the open loop keeps open at most (each holds a socket; the hard limit here is 20,000): past it,
# scheduled requests are counted as skipped instead of sent.
MAX_OPEN = 15_000


@dataclass
class Phase:
    name: str
    concurrency: int | None  # closed loop; None: open loop at offered_per_s
    offered_per_s: float | None
    seconds: float
    sent: int = 0
    skipped: int = 0  # open loop: not sent, MAX_OPEN requests already open
    ok: int = 0
    refused: int = 0  # 503
    other: int = 0
    other_examples: list[str] = field(default_factory=list)
    ok_per_s: float = 0.0
    ok_latency_ms: dict[str, float] = field(default_factory=dict)
    refused_latency_ms: dict[str, float] = field(default_factory=dict)
    server_rss_mib: list[float] = field(default_factory=list)  # start, peak, end
    gateway_rss_mib: list[float] = field(default_factory=list)
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0  # tritonserver and its stubs
    gateway_cpu_s: float = 0.0
    in_flight_limit: dict[str, float] = field(default_factory=dict)  # sampled from /metrics: median, min, max
    waiting_max: float = 0.0
    load_average: float = 0.0


@dataclass
class PolicyRun:
    policy: str
    description: str
    environment: dict[str, str]
    phases: list[Phase] = field(default_factory=list)
    counters: dict[str, float | None] = field(default_factory=dict)


def bodies(count: int = BODIES) -> list[bytes]:
    text = SENTENCE * 11
    return [json.dumps({"input": f"{index}. {text}"}).encode() for index in range(count)]


def metric(text: str, name: str) -> float | None:
    match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def scrape(url: str) -> str:
    with contextlib.suppress(OSError):
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
            return response.read().decode()
    return ""


class Sampler(RssSampler):
    """Peak RSS of tritonserver's group and of the gateway, and the gateway's in-flight bound and waiting
    room, sampled in a thread."""

    def __init__(self, server_pgid: int, gateway_pgid: int, url: str) -> None:
        super().__init__(server_pgid, gateway_pgid, every_s=METRICS_EVERY_S)
        self.url = url
        self.limits: list[float] = []
        self.waiting: list[float] = []

    def sample(self) -> None:
        super().sample()
        text = scrape(self.url)
        for values, name in (
            (self.limits, "gateway_triton_in_flight_limit"),
            (self.waiting, "gateway_requests_waiting"),
        ):
            value = metric(text, name)
            if value is not None:
                values.append(value)


class Client:
    def __init__(self, url: str, session) -> None:
        self.url = f"{url}/v1/embeddings"
        self.session = session
        self.bodies = bodies()
        self.count = 0
        # (seconds since the phase started, latency, status) of every request in the current phase
        self.records: list[tuple[float, float, int]] = []
        self.phase_start = time.perf_counter()

    async def one(self, phase: Phase, ok: list[float], refused: list[float]) -> None:
        import aiohttp

        body = self.bodies[self.count % len(self.bodies)]
        self.count += 1
        phase.sent += 1
        started = time.perf_counter()
        try:
            async with self.session.post(self.url, data=body, headers=HEADERS) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            status, detail = None, f"{type(error).__name__}: {error}"
        else:
            detail = f"HTTP {status}"
        seconds = time.perf_counter() - started
        self.records.append((round(started - self.phase_start, 4), round(seconds, 4), status or 0))
        if status == 200:
            phase.ok += 1
            ok.append(seconds)
        elif status == 503:
            phase.refused += 1
            refused.append(seconds)
        else:
            phase.other += 1
            if len(phase.other_examples) < 3:
                phase.other_examples.append(detail[:200])

    async def closed_loop(self, phase: Phase, ok: list[float], refused: list[float]) -> None:
        deadline = time.perf_counter() + phase.seconds

        await loops.until(lambda: self.one(phase, ok, refused), deadline, phase.concurrency or 1)

    async def open_loop(self, phase: Phase, ok: list[float], refused: list[float]) -> None:
        rate = phase.offered_per_s or 1.0
        tasks = []
        start = time.perf_counter()
        for index in range(int(rate * phase.seconds)):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if phase.sent - len(ok) - len(refused) - phase.other >= MAX_OPEN:
                phase.skipped += 1
                continue
            tasks.append(asyncio.ensure_future(self.one(phase, ok, refused)))
        await asyncio.gather(*tasks)


async def run_phase(client: Client, sampler_args: tuple[int, int, str], phase: Phase) -> Phase:
    ok: list[float] = []
    refused: list[float] = []
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    groups_before = [group_cpu_seconds(pgid) for pgid in sampler_args[:2]]
    started = client.phase_start = time.perf_counter()
    client.records = []
    # A full collection in this client (tens of thousands of records and open requests) would stall every
    # request in flight and count as the server's latency: no collections during a phase.
    gc.collect()
    gc.disable()
    try:
        with Sampler(*sampler_args) as sampler:
            if phase.concurrency is None:
                await client.open_loop(phase, ok, refused)
            else:
                await client.closed_loop(phase, ok, refused)
    finally:
        gc.enable()
    elapsed = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    phase.server_cpu_s, phase.gateway_cpu_s = (
        round(group_cpu_seconds(pgid) - before, 1) for pgid, before in zip(sampler_args[:2], groups_before)
    )
    end = sampler.rss()
    phase.seconds = round(elapsed, 2)
    phase.ok_per_s = round(phase.ok / elapsed, 1)
    phase.ok_latency_ms = percentiles(ok)
    phase.refused_latency_ms = percentiles(refused)
    phase.server_rss_mib = [sampler.start[0], round(max(sampler.peaks[0], end[0]), 1), end[0]]
    phase.gateway_rss_mib = [sampler.start[1], round(max(sampler.peaks[1], end[1]), 1), end[1]]
    phase.client_cpu_s = round(
        (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime), 2
    )
    if sampler.limits:
        ordered = sorted(sampler.limits)
        phase.in_flight_limit = {
            "median": ordered[len(ordered) // 2],
            "min": ordered[0],
            "max": ordered[-1],
        }
    phase.waiting_max = max(sampler.waiting, default=0.0)
    phase.load_average = round(os.getloadavg()[0], 2)
    log(
        f"  {phase.name}: sent {phase.sent}, OK {phase.ok} ({phase.ok_per_s}/s, p50 "
        f"{phase.ok_latency_ms.get('p50')} p99 {phase.ok_latency_ms.get('p99')} ms), 503 {phase.refused} "
        f"(p50 {phase.refused_latency_ms.get('p50')} p99 {phase.refused_latency_ms.get('p99')} ms), other "
        f"{phase.other}; bound {phase.in_flight_limit.get('median')}, load {phase.load_average}"
    )
    return phase


async def measure_policy(
    args: argparse.Namespace, server, run: PolicyRun, overload_rate: float | None, log_dir: Path
) -> PolicyRun:
    import aiohttp

    environment = {
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_TOKENIZER": str(Path(os.environ.get("MODEL_PATH") or TINY_EMBEDDING)),
        **run.environment,
    }
    with GatewayProcess(server.grpc_url, environment, log_dir / f"gateway-{run.policy}.log") as gateway:
        sampler_args = (server.pid, gateway.pid, gateway.url)
        # Idle connections are dropped before uvicorn's 5 s keep-alive closes them under the client.
        connector = aiohttp.TCPConnector(limit=0, force_close=False, keepalive_timeout=3.0)
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            client = Client(gateway.url, session)
            log(f"policy {run.policy}: {run.description}")
            await client.closed_loop(Phase("warm-up", 8, None, 3.0), [], [])
            run.phases.append(
                await run_phase(client, sampler_args, Phase("unloaded", 1, None, args.unloaded_seconds))
            )
            for concurrency in args.concurrency:
                run.phases.append(
                    await run_phase(
                        client,
                        sampler_args,
                        Phase(f"capacity c={concurrency}", concurrency, None, args.capacity_seconds),
                    )
                )
            if overload_rate is None:
                overload_rate = args.multiple * max(phase.ok_per_s for phase in run.phases[1:])
            run.phases.append(
                await run_phase(
                    client,
                    sampler_args,
                    Phase(f"overload {args.multiple:g}x", None, round(overload_rate, 1), args.seconds),
                )
            )
            # Every overload request (start s, latency s, status), to see when the slow ones were sent.
            (log_dir / f"{run.policy}-overload-requests.json").write_text(json.dumps(client.records))
            await asyncio.sleep(2.0)
            run.phases.append(
                await run_phase(client, sampler_args, Phase("after", 1, None, args.after_seconds))
            )
        text = scrape(gateway.url)
        for name in (
            "gateway_overload_shed_total",
            "gateway_triton_queue_refusals_total",
            "gateway_triton_in_flight_limit",
            "gateway_triton_unloaded_latency_seconds",
        ):
            run.counters[name] = metric(text, name)
    return run


def summary_rows(runs: list[PolicyRun]) -> list[str]:
    header = "policy|phase|offered/s|sent|OK|503|other|OK/s|OK p50 / p99 ms|503 p50 / p99 ms|bound (median)"
    rows = []
    for run in runs:
        for phase in run.phases:
            ok, refused = phase.ok_latency_ms, phase.refused_latency_ms
            rows.append(
                (
                    run.policy,
                    phase.name,
                    phase.offered_per_s or "-",
                    f"{phase.sent} (+{phase.skipped} skipped)" if phase.skipped else phase.sent,
                    phase.ok,
                    phase.refused,
                    phase.other,
                    phase.ok_per_s,
                    f"{ok.get('p50', '-')} / {ok.get('p99', '-')}",
                    f"{refused.get('p50', '-')} / {refused.get('p99', '-')}",
                    phase.in_flight_limit.get("median", "-"),
                    " / ".join(str(value) for value in phase.server_rss_mib),
                    " / ".join(str(value) for value in phase.gateway_rss_mib),
                    f"{phase.server_cpu_s} / {phase.gateway_cpu_s} / {phase.client_cpu_s}",
                    phase.load_average,
                )
            )
    more = (
        "server RSS MiB start/peak/end",
        "gateway RSS MiB start/peak/end",
        "CPU s server / gateway / client",
    )
    return table((*header.split("|"), *more, "load"), rows)


def verdicts(runs: list[PolicyRun]) -> list[str]:
    lines = []
    for run in runs:
        phases = {phase.name.split(" ")[0]: phase for phase in run.phases}
        unloaded, overload = phases["unloaded"], phases["overload"]
        capacities = [phase for phase in run.phases if phase.name.startswith("capacity")]
        p99, base = overload.ok_latency_ms.get("p99"), unloaded.ok_latency_ms.get("p99")
        ratio = f"{p99 / base:.2f}x" if p99 and base else "n/a"
        refused = overload.refused_latency_ms
        lines.append(
            f"- **{run.policy}** ({run.description}): admitted p99 under overload {p99} ms = **{ratio}** the "
            f"unloaded p99 ({base} ms); {overload.refused} of {overload.sent} refused "
            f"({overload.refused / max(1, overload.sent):.0%}) in {refused.get('p50', '-')} ms p50 / "
            f"{refused.get('p90', '-')} ms p90 / {refused.get('p99', '-')} ms p99; OK "
            f"{overload.ok_per_s}/s under overload vs capacity "
            + ", ".join(f"{phase.ok_per_s}/s at c={phase.concurrency}" for phase in capacities)
            + f"; RSS peak server {overload.server_rss_mib[1]} MiB, gateway "
            f"{overload.gateway_rss_mib[1]} MiB "
            f"(after: {phases['after'].server_rss_mib[2]} / {phases['after'].gateway_rss_mib[2]}); "
            f"shed for overload {run.counters.get('gateway_overload_shed_total')}."
        )
    return lines


def write_report(experiment: Experiment, report: dict, runs: list[PolicyRun]) -> None:
    experiment.write_json("gateway_overload.json", report)
    lines = [
        f"# Overload through the gateway: {report['host']}, {report['started']}",
        "",
        experiment.provenance(report)
        + (
            f" Pinned: tritonserver on core(s) {report['pinned']['server']}, the gateway and the client on "
            f"{report['pinned']['gateway_and_client']}."
            if report["pinned"]
            else ""
        ),
        "",
        "Single ~200-token texts to /v1/embeddings from one aiohttp client (keep-alive) on the same cores; "
        "one tritonserver (embedding ensemble), a fresh gateway per policy. Overload is an open loop at "
        + (
            f"{report['overload_rate']:g}/s"
            if report["overload_rate"]
            else f"{report['multiple']:g}x each policy's best capacity, measured just before"
        )
        + f" for {report['seconds']:g} s.",
        "",
        *summary_rows(runs),
        "",
        *verdicts(runs),
        "",
    ]
    experiment.write_markdown("gateway_overload.md", lines, echo=True)


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("perf.drills.gateway_overload", __doc__)
    parser.add_argument("--multiple", type=float, default=4.0, help="overload = this many times capacity")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the overload phase")
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="overload req/s (default: --multiple x each policy's capacity)",
    )
    parser.add_argument("--capacity-seconds", type=float, default=15.0)
    parser.add_argument("--unloaded-seconds", type=float, default=8.0)
    parser.add_argument("--after-seconds", type=float, default=5.0)
    parser.add_argument(
        "--concurrency", type=lambda text: parse_list(text, int), default=[16, 64], help="capacity runs"
    )
    parser.add_argument(
        "--policies", type=parse_list, default=["fifo", "lifo", "latency2"], help=", ".join(POLICIES)
    )
    add_out_argument(parser)
    parser.add_argument(
        "--pin",
        action="store_true",
        help="tritonserver on the first core, the gateway and this client on the others: the server's "
        "latency without the load generator's CPU",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.policies if name not in POLICIES]
    if unknown:
        parser.error(f"unknown policies {unknown}; known: {', '.join(POLICIES)}")
    # First come, first served keeps every request of the overload open: thousands of connections.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    experiment = Experiment("perf.drills.gateway_overload", argv, args.out)
    log_dir = experiment.out / "raw" / "gateway_overload"
    log_dir.mkdir(parents=True, exist_ok=True)
    from perf.lib.servers import start_server

    model = Path(os.environ.get("MODEL_PATH") or TINY_EMBEDDING)
    cores = sorted(os.sched_getaffinity(0))
    if args.pin:
        if len(cores) < 2:
            parser.error("--pin needs at least 2 cores")
        os.sched_setaffinity(0, cores[:1])  # tritonserver and its stubs inherit it
    endpoint = start_server("overload", model, log_dir / "tritonserver.log")
    if args.pin:
        os.sched_setaffinity(0, cores[1:])  # the gateways and this client
    runs: list[PolicyRun] = []
    try:
        for name in args.policies:
            description, environment = POLICIES[name]
            run = PolicyRun(name, description, environment)
            asyncio.run(measure_policy(args, endpoint.server, run, args.rate, log_dir))
            runs.append(run)
    finally:
        endpoint.stop()
    report = experiment.report(
        model=shown_path(model),
        multiple=args.multiple,
        seconds=args.seconds,
        overload_rate=args.rate,
        pinned={"server": cores[:1], "gateway_and_client": cores[1:]} if args.pin else None,
        runs=[asdict(run) for run in runs],
    )
    write_report(experiment, report, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
