"""What the OpenAI-compatible gateway costs: text_200 through it vs perf_analyzer gRPC on the ensemble.

One tritonserver and one gateway (``perf.gateway_stack``); at each concurrency, alternately: perf_analyzer
over gRPC straight to ``qwen3_vl_embedding`` (time windows) and a closed-loop asyncio HTTP client posting the
same texts to ``/v1/embeddings`` for as long (one request per connection at a time, keep-alive, bodies built
beforehand so the client spends its CPU on HTTP only). The throughput ratio gateway ÷ direct is the overhead
figure (target ≥ 0.9). Both clients share the server's cores, so the CPU each process used is recorded too.

    python -m perf.gateway_bench [--concurrency 16,64] [--repeats 2] [--profile] [--run-dir DIR]

Writes ``gateway-overhead.json`` and ``gateway-overhead.md`` (with the command) into the run directory;
logs, CSVs and py-spy output under its ``raw/``.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from perf.gateway_stack import EMBEDDING_NAME, GatewayStack, shown_path
from perf.lib.console import add_priority_argument, command_parser, log, parse_list
from perf.lib.gateway_load import (
    ENSEMBLE,
    STEPS,
    WARMUP_S,
    CpuMeter,
    Side,
    Target,
    gateway_environment,
    request_bodies,
    run_gateway,
    server_snapshot,
    stage_summary,
)
from perf.lib.perf_analyzer import perf_analyzer_binary, perf_analyzer_env
from perf.lib.profiling import collapsed_stacks
from perf.lib.record import Experiment

TARGET_RATIO = 0.9
# perf_analyzer averages its last three time windows. Stability 100 % accepts the first three, so both
# sides measure for a fixed 3 x 4 s (on 2 shared cores a stricter check often never settles); noise is
# handled by alternating the sides and repeating.
WINDOW_MS = 4000
STABILITY = 100
MAX_TRIALS = 6
PROFILE_S = 15.0
PROFILE_RATE = 250  # samples per second
PERF_ANALYZER_TIMEOUT_S = 180.0

# Gateway stack frames -> where its time goes; the first match wins, so specific parts come first.
CATEGORIES = (
    ("request body: JSON parse + pydantic validation", ("pydantic", "json/decoder", "orjson", "protocol.py")),
    ("response: embeddings to JSON / base64", ("json/encoder", "jsonable_encoder", "render (", "base64")),
    ("gRPC client (tritonclient / grpcio)", ("tritonclient", "grpc/")),
    ("HTTP server (uvicorn / h11 / httptools)", ("uvicorn", "h11", "httptools")),
    ("routing / middleware (starlette / fastapi)", ("starlette", "fastapi")),
    ("gateway code", ("gateway/",)),
    # uvloop runs sockets and callbacks in C: py-spy sees that time in the loop's own Python frame.
    ("event loop (uvloop C code: sockets, callbacks)", ("asyncio", "uvloop")),
)
# Frames every sample passes through on its way to the event loop: nothing to learn from their share.
ROOT_FRAMES: tuple[str, ...] = (
    "runpy",
    "gateway/__main__.py",
    "uvicorn/main.py",
    "uvicorn/server.py",
    "uvicorn/_compat.py",
) + ("asyncio/runners.py", "asyncio/base_events.py", "asyncio/events.py")


def perf_analyzer_command(
    grpc_url: str, data: Path, concurrency: int, window_ms: int, csv_path: Path
) -> list[str]:
    return [
        perf_analyzer_binary(),
        "-m",
        ENSEMBLE,
        "-u",
        grpc_url,
        "-i",
        "grpc",
        "--input-data",
        str(data),
        "--concurrency-range",
        f"{concurrency}:{concurrency}",
        "--measurement-mode",
        "time_windows",
        "-p",
        str(window_ms),
        "-s",
        str(STABILITY),
        "-r",
        str(MAX_TRIALS),
        "-f",
        str(csv_path),
    ]


def run_direct(
    target: Target, meter: CpuMeter, data: Path, concurrency: int, repeat: int, window_ms: int, raw: Path
) -> Side:
    side = Side("direct (perf_analyzer gRPC)", concurrency, repeat)
    name = f"direct-c{concurrency}-r{repeat}"
    csv_path = raw / f"{name}.csv"
    before, stats_before = meter.read(), server_snapshot(target)
    started = time.monotonic()
    log_text = ""
    # A window with no answer in it (a slow point on a busy machine) fails the run: once more, twice as long.
    for window in (window_ms, 2 * window_ms):
        command = perf_analyzer_command(target.grpc_url, data, concurrency, window, csv_path)
        csv_path.unlink(missing_ok=True)
        try:
            result = subprocess.run(
                command,
                env=perf_analyzer_env(),
                capture_output=True,
                text=True,
                timeout=PERF_ANALYZER_TIMEOUT_S,
            )
            output, code = result.stdout + result.stderr, result.returncode
        except subprocess.TimeoutExpired as expired:
            output, code = str(expired.stdout or ""), -9
        log_text += f"$ {shlex.join(command)}\n{output}\n"
        if code == 0 and csv_path.exists():
            break
    side.seconds = time.monotonic() - started
    side.cpu_cores = meter.cores(before, meter.read())
    side.stages = stage_summary(stats_before, server_snapshot(target))
    side.load1 = round(os.getloadavg()[0], 2)
    (raw / f"{name}.log").write_text(log_text)
    if code != 0 or not csv_path.exists():
        side.error = f"perf_analyzer exited with {code}: " + output.strip()[-300:]
        return side
    with csv_path.open(newline="") as handle:
        row = next(csv.DictReader(handle))
    side.ok = True
    side.throughput = float(row["Inferences/Second"])
    for column, key in (("p50 latency", "p50_ms"), ("p90 latency", "p90_ms"), ("p99 latency", "p99_ms")):
        setattr(side, key, float(row[column]) / 1000.0)
    stages = ("Client Send", "Network+Server Send/Recv", "Server Queue", "Client Recv") + (
        "Server Compute Input",
        "Server Compute Infer",
        "Server Compute Output",
    )
    side.avg_ms = float(row.get("Avg latency") or sum(float(row[c]) for c in stages)) / 1000.0
    return side


# ----------------------------------------------------------------------------------------------------------
# Profile of the gateway process
# ----------------------------------------------------------------------------------------------------------


def profile_gateway(target: Target, bodies: list[bytes], concurrency: int, raw: Path) -> dict:
    """py-spy on the gateway while the HTTP client drives it: busy share and where the busy time goes."""
    from perf.lib.profiling import available

    binary = available()
    if binary is None:
        return {"error": "py-spy not found"}
    if not target.gateway_pgid:
        return {"error": "the gateway was not started here: no process to profile"}
    out = raw / f"gateway-c{concurrency}-pyspy.txt"
    # The gateway is busy only a few % of the time: a high rate gets enough samples in a short run.
    command = [binary, "record", "--pid", str(target.gateway_pgid), "--rate", str(PROFILE_RATE)]
    command += ["--format", "raw", "--output", str(out), "--nonblocking", "--duration", str(int(PROFILE_S))]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    side = run_gateway(target, CpuMeter(target), bodies, concurrency, 0, PROFILE_S - WARMUP_S)
    try:
        spy.wait(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()
    if not out.exists():
        return {"error": "py-spy wrote no profile (ptrace permission?)"}
    result = summarize_gateway_profile(out)
    result.update(
        concurrency=concurrency,
        throughput_while_profiled=round(side.throughput, 1),
        gateway_cores=side.cpu_cores.get("gateway", 0.0),
        raw=str(out.relative_to(raw.parent.parent)),
    )
    return result


def summarize_gateway_profile(path: Path, top: int = 15) -> dict:
    """Samples by category (first matching frame from the leaf up) plus the hottest functions, both as
    leaf (self) and anywhere on the stack (inclusive)."""
    categories: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for stack, count in collapsed_stacks(path):
        total += count
        frames = stack.split(";")
        label = "other"
        for frame in reversed(frames):
            found = next((name for name, needles in CATEGORIES if any(n in frame for n in needles)), None)
            if found:
                label = found
                break
        categories[label] += count
        leaves[_short(frames[-1])] += count
        for name in {_short(frame) for frame in frames if not any(root in frame for root in ROOT_FRAMES)}:
            inclusive[name] += count
    share = (lambda n: round(n / total, 3)) if total else (lambda n: 0.0)
    return {
        "samples": total,
        "categories": {label: share(n) for label, n in categories.most_common()},
        "self": [(name, share(n)) for name, n in leaves.most_common(top)],
        "inclusive": [(name, share(n)) for name, n in inclusive.most_common(top)],  # less the loop's roots
    }


def _short(frame: str) -> str:
    """`f (/venv/.../site-packages/grpc/aio/_call.py:123)` -> `f (grpc/aio/_call.py)`: the file from its
    package down (the gateway's from gateway/), else its last two path parts."""
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    parts = file.split("/")
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    elif "gateway" in parts:
        parts = parts[parts.index("gateway") :]
    else:
        parts = parts[-2:]
    return f"{name} ({'/'.join(parts)})" if file else name


# ----------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------


def summarize(sides: list[Side], concurrencies: list[int]) -> list[dict]:
    rows: list[dict] = []
    for concurrency in concurrencies:
        direct = [s for s in sides if s.concurrency == concurrency and s.path.startswith("direct") and s.ok]
        gateway = [s for s in sides if s.concurrency == concurrency and s.path.startswith("gateway") and s.ok]
        if not direct or not gateway:
            rows.append({"concurrency": concurrency, "ratio": None})
            continue
        direct_rate = sum(s.throughput for s in direct) / len(direct)
        gateway_rate = sum(s.throughput for s in gateway) / len(gateway)
        row: dict[str, object] = {
            "concurrency": concurrency,
            "direct_throughput": round(direct_rate, 1),
            "gateway_throughput": round(gateway_rate, 1),
            "ratio": round(gateway_rate / direct_rate, 3),
            "meets_target": gateway_rate / direct_rate >= TARGET_RATIO,
        }
        if all(s.cpu_cores for s in direct + gateway):
            row["cpu_ms_per_request"] = {
                "direct": cpu_ms_per_request(direct),
                "gateway": cpu_ms_per_request(gateway),
            }
        rows.append(row)
    return rows


def cpu_ms_per_request(sides: list[Side]) -> dict[str, float]:
    """CPU milliseconds each process spent per request answered, averaged over the repeats: unlike the
    throughput, this hardly depends on what else the shared cores were doing."""
    roles = sorted({role for side in sides for role in side.cpu_cores})
    return {
        role: round(sum(1000 * s.cpu_cores.get(role, 0.0) / s.throughput for s in sides) / len(sides), 2)
        for role in roles
        if any(s.cpu_cores.get(role, 0.0) >= 0.005 for s in sides)
    }


def write_report(experiment: Experiment, report: dict) -> None:
    experiment.write_json("gateway-overhead.json", report)
    lines = [
        *experiment.heading(
            "Gateway overhead: text_200 through /v1/embeddings vs perf_analyzer gRPC on the ensemble", report
        ),
        f"- Model: {report['model']}; one tritonserver + one gateway, both clients on the same 2 cores",
        f"- Target: gateway ≥ {TARGET_RATIO} × direct throughput",
        f"- Gateway settings changed (environment): {', '.join(report.get('gateway_env', [])) or 'none'}",
        f"- Scheduling priority (`--priority`, autogroup nice of server, gateway and clients): "
        f"{report['priority']}",
        "",
        "| concurrency | direct req/s | gateway req/s | ratio | target |",
        "|---:|---:|---:|---:|---|",
    ]
    for row in report["summary"]:
        if row["ratio"] is None:
            lines.append(f"| {row['concurrency']} | – | – | – | not measured |")
            continue
        verdict = "met" if row["meets_target"] else f"missed by {TARGET_RATIO - row['ratio']:.2f}"
        lines.append(
            f"| {row['concurrency']} | {row['direct_throughput']:.1f} | {row['gateway_throughput']:.1f} "
            f"| {row['ratio']:.3f} | {verdict} |"
        )
    costs = [row for row in report["summary"] if row.get("cpu_ms_per_request")]
    if costs:
        roles = sorted(
            {role for row in costs for side in row["cpu_ms_per_request"].values() for role in side}
        )
        lines += [
            "",
            "CPU ms per request answered (what a request costs each process; hardly depends on other work):",
            "",
            "| concurrency | path | " + " | ".join(roles) + " | total |",
            "|---:|---|" + "---:|" * (len(roles) + 1),
        ]
        for row in costs:
            for path, cost in row["cpu_ms_per_request"].items():
                shares = " | ".join(f"{cost.get(role, 0.0):.2f}" for role in roles)
                lines.append(f"| {row['concurrency']} | {path} | {shares} | {sum(cost.values()):.2f} |")
    lines += [
        "",
        "Every run, in the order made (latencies in ms; CPU in cores used on average during the run):",
        "",
        "| c | # | path | req/s | p50 | p90 | p99 | server | gateway | client | load1 | rows/call | errors |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for side in report["runs"]:
        cpu = side["cpu_cores"]
        client = cpu.get("perf_analyzer" if side["path"].startswith("direct") else "http client", 0.0)
        lines.append(
            f"| {side['concurrency']} | {side['repeat']} | {side['path']} | {side['throughput']:.1f} "
            f"| {side['p50_ms']:.1f} | {side['p90_ms']:.1f} | {side['p99_ms']:.1f} "
            f"| {cpu.get('tritonserver + stubs', 0.0):.2f} | {cpu.get('gateway', 0.0):.2f} | {client:.2f} "
            f"| {side['load1']:.1f} | {side.get('rows_per_call') or '–'} "
            f"| {side['error'] or side['errors']} |"
        )
    staged = [side for side in report["runs"] if side.get("stages")]
    if staged:
        lines += [
            "",
            "Triton's statistics over each run (rows per execute, queue ms and compute ms per request):",
            "",
            "| c | # | path | preprocess rows/exec | queue | compute | model rows/exec | queue | compute |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for side in staged:
            cells: list[str] = []
            for step in STEPS:
                stage = side["stages"].get(step, {})
                cells += [
                    f"{stage.get(key, 0.0):.2f}" for key in ("rows_per_execute", "queue_ms", "compute_ms")
                ]
            lines.append(
                f"| {side['concurrency']} | {side['repeat']} | {side['path']} | " + " | ".join(cells) + " |"
            )
    profile = report.get("profile")
    if profile and "categories" in profile:
        lines += [
            "",
            f"## Where the gateway's time goes (py-spy, concurrency {profile['concurrency']}, "
            f"{profile['throughput_while_profiled']} req/s while sampled, gateway using "
            f"{profile['gateway_cores']:.2f} cores)",
            "",
            "Busy samples only (the event loop waiting in epoll is idle); by the innermost matching frame:",
            "",
            "| where | share |",
            "|---|---:|",
        ]
        lines += [f"| {label} | {share:.1%} |" for label, share in profile["categories"].items()]
        lines += ["", "| hottest functions (self) | share | | anywhere on the stack (inclusive) | share |"]
        lines += ["|---|---:|---|---|---:|"]
        for (leaf, leaf_share), (name, share) in zip(profile["self"], profile["inclusive"]):
            lines.append(f"| `{leaf}` | {leaf_share:.1%} | | `{name}` | {share:.1%} |")
    elif profile:
        lines += ["", f"Profile: {profile.get('error')}"]
    experiment.write_markdown("gateway-overhead.md", lines)


def measure(target: Target, args: argparse.Namespace, run_dir: Path, raw: Path) -> dict:
    """The alternating runs (and the profile) against one target; the report's measured part."""
    from perf.lib.workloads import generate

    concurrencies = parse_list(args.concurrency, int)
    data = generate("text_200", rows=args.rows)
    texts = [entry["TEXT"]["content"][0] for entry in json.loads(data.read_text())["data"]]
    bodies = request_bodies(texts, args.model)
    measured_s = 3 * args.window_ms / 1000.0
    meter = CpuMeter(target)
    sides: list[Side] = []
    # Warm the gateway's path (tokenizer, channel, first requests) before anything counts.
    run_gateway(target, meter, bodies, max(concurrencies), 0, min(3.0, measured_s))
    for concurrency in concurrencies:
        for repeat in range(1, args.repeats + 1):
            direct = run_direct(target, meter, data, concurrency, repeat, args.window_ms, raw)
            log(f"c={concurrency} #{repeat} direct:  {direct.throughput:7.1f} req/s {direct.error}")
            gateway = run_gateway(target, meter, bodies, concurrency, repeat, measured_s)
            log(f"c={concurrency} #{repeat} gateway: {gateway.throughput:7.1f} req/s {gateway.error}")
            sides += [direct, gateway]
    profile = profile_gateway(target, bodies, max(concurrencies), raw) if args.profile else None
    return {
        "summary": summarize(sides, concurrencies),
        "runs": [asdict(side) for side in sides],
        "profile": profile,
    }


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("perf.gateway_bench", __doc__)
    parser.add_argument("--concurrency", default="16,64", help="comma-separated (default 16,64)")
    parser.add_argument("--repeats", type=int, default=2, help="direct/gateway pairs per concurrency")
    parser.add_argument("--window-ms", type=int, default=WINDOW_MS, help="perf_analyzer's time window")
    parser.add_argument(
        "--rows", type=int, default=None, help="text_200 rows (default: the workload's 1,000)"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway at the top concurrency")
    parser.add_argument("--run-dir", type=Path, default=None, help="default perf/results/<host>/<date>")
    parser.add_argument("--triton-grpc-url", default=None, help="with --gateway-url: servers already running")
    parser.add_argument("--gateway-url", default=None, help="e.g. http://127.0.0.1:9000")
    add_priority_argument(parser)
    parser.add_argument("--model", default=EMBEDDING_NAME, help="`model` in the requests (a served name)")
    args = parser.parse_args(argv)
    if bool(args.triton_grpc_url) != bool(args.gateway_url):
        parser.error("--triton-grpc-url and --gateway-url go together")
    experiment = Experiment("perf.gateway_bench", argv, args.run_dir)
    run_dir = experiment.out
    raw = run_dir / "raw" / "gateway-overhead"
    raw.mkdir(parents=True, exist_ok=True)
    if args.gateway_url:
        model = "(the running server's)"
        measured = measure(Target(args.triton_grpc_url, args.gateway_url.rstrip("/")), args, run_dir, raw)
    else:
        with GatewayStack(raw) as stack:
            target = Target.of(stack)
            log(f"tritonserver {target.grpc_url}, gateway {target.base_url}")
            model = shown_path(stack.embedding_model)
            if args.priority:
                for problem in stack.prioritize(args.priority):
                    log(f"priority not set for {problem}")
            measured = measure(target, args, run_dir, raw)
    report = experiment.report(
        model=model,
        workload="text_200 (perf/lib/workloads.py): texts of exactly 200 tokens, default instruction",
        target_ratio=TARGET_RATIO,
        gateway_env=gateway_environment(),
        priority=args.priority,
        **measured,
    )
    write_report(experiment, report)
    log(f"wrote {run_dir / 'gateway-overhead.md'}")
    for row in report["summary"]:
        log(f"  c={row['concurrency']}: ratio {row['ratio']}")
    failed = [run for run in report["runs"] if not run["ok"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
