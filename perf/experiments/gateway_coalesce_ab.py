"""Gateway coalescing on vs off, paired, for a machine others share: text_200 through two stacks (each a
tritonserver + gateway, ``perf.gateway_stack``), one with ``GATEWAY_COALESCE_CALLS=<calls>`` and one with 0,
driven in turn by the closed-loop HTTP client of ``perf.gateway_bench`` in short windows (ABBA order, so
that load that rises or falls over the run weighs on both alike). Only the stack being driven works; the
ratio of adjacent windows is the figure, not the absolute rates. ``perf.gateway_bench`` (against
perf_analyzer on a quiet machine) stays the target's measure.

    python -m perf.experiments.gateway_coalesce_ab [--concurrency 16,64] [--pairs 4]
        [--window-s 6] [--calls 2]

Writes ``gateway-coalesce-ab.json`` and ``.md`` (with the command) into the run directory, logs under raw/.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

from perf.gateway_stack import EMBEDDING_NAME, GatewayStack
from perf.lib.console import command_parser, log, parse_list
from perf.lib.gateway_load import CpuMeter, Target, request_bodies, run_gateway
from perf.lib.record import Experiment

SETTING = "GATEWAY_COALESCE_CALLS"


def cpu_ms(side: dict, role: str) -> float:
    """CPU ms per answered request of one process group over a window."""
    return 1000.0 * side["cpu_cores"].get(role, 0.0) / side["throughput"] if side["throughput"] else 0.0


def summarize(windows: list[dict], concurrency: int) -> dict:
    mine = [window for window in windows if window["concurrency"] == concurrency]
    ratios = []
    for index in range(0, len(mine) - 1, 2):
        pair = {window["mode"]: window for window in mine[index : index + 2]}
        if pair.get("on", {}).get("throughput") and pair.get("off", {}).get("throughput"):
            ratios.append(round(pair["on"]["throughput"] / pair["off"]["throughput"], 3))
    row: dict = {"concurrency": concurrency, "ratios_on_over_off": ratios}
    row["median_ratio"] = statistics.median(ratios) if ratios else None
    for mode in ("off", "on"):
        sides = [window for window in mine if window["mode"] == mode and window["ok"]]
        row[mode] = {
            "req_per_s": round(statistics.mean(side["throughput"] for side in sides), 1) if sides else 0.0,
            "server_cpu_ms": round(statistics.mean(cpu_ms(s, "tritonserver + stubs") for s in sides), 2)
            if sides
            else 0.0,
            "gateway_cpu_ms": round(statistics.mean(cpu_ms(s, "gateway") for s in sides), 3)
            if sides
            else 0.0,
            "rows_per_call": round(statistics.mean(side["rows_per_call"] for side in sides), 2)
            if sides
            else 0.0,
        }
    return row


def write_report(experiment: Experiment, report: dict) -> None:
    experiment.write_json("gateway-coalesce-ab.json", report)
    lines = [
        *experiment.heading(
            "Gateway coalescing on vs off (paired windows, text_200 over HTTP /v1/embeddings)", report
        ),
        f"- on = {SETTING}={report['calls']}, off = {SETTING}=0; two stacks, only the driven one works",
        "",
        "| c | on ÷ off, each pair | median | req/s off / on | Triton CPU ms/req off / on "
        "| gateway CPU ms/req off / on | rows per Triton call off / on |",
        "|---:|---|---:|---|---|---|---|",
    ]
    for row in report["summary"]:
        off, on = row["off"], row["on"]
        lines.append(
            f"| {row['concurrency']} | {', '.join(f'{r:.3f}' for r in row['ratios_on_over_off'])} "
            f"| {row['median_ratio'] or 0:.3f} | {off['req_per_s']} / {on['req_per_s']} "
            f"| {off['server_cpu_ms']} / {on['server_cpu_ms']} "
            f"| {off['gateway_cpu_ms']} / {on['gateway_cpu_ms']} "
            f"| {off['rows_per_call']} / {on['rows_per_call']} |"
        )
    lines += [
        "",
        "Every window, in the order made (latencies in ms):",
        "",
        "| c | mode | req/s | p50 | p90 | p99 | Triton CPU ms/req | gateway CPU ms/req | rows/call | load1 "
        "| errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for side in report["windows"]:
        lines.append(
            f"| {side['concurrency']} | {side['mode']} | {side['throughput']:.1f} | {side['p50_ms']:.1f} "
            f"| {side['p90_ms']:.1f} | {side['p99_ms']:.1f} | {cpu_ms(side, 'tritonserver + stubs'):.2f} "
            f"| {cpu_ms(side, 'gateway'):.3f} | {side['rows_per_call']} | {side['load1']:.1f} "
            f"| {side['error'] or side['errors']} |"
        )
    experiment.write_markdown("gateway-coalesce-ab.md", lines)


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("perf.experiments.gateway_coalesce_ab", __doc__)
    parser.add_argument("--concurrency", default="16,64", help="comma-separated (default 16,64)")
    parser.add_argument("--pairs", type=int, default=4, help="on/off window pairs per concurrency")
    parser.add_argument("--window-s", type=float, default=6.0, help="measured seconds per window")
    parser.add_argument("--calls", type=int, default=2, help=f"{SETTING} of the 'on' stack")
    parser.add_argument("--run-dir", type=Path, default=None, help="default perf/results/<host>/<date>")
    args = parser.parse_args(argv)
    from perf.lib.workloads import generate

    experiment = Experiment("perf.experiments.gateway_coalesce_ab", argv, args.run_dir)
    run_dir = experiment.out
    raw = run_dir / "raw" / "gateway-coalesce-ab"
    raw.mkdir(parents=True, exist_ok=True)
    data = generate("text_200", rows=None)
    texts = [entry["TEXT"]["content"][0] for entry in json.loads(data.read_text())["data"]]
    bodies = request_bodies(texts, EMBEDDING_NAME)
    windows: list[dict] = []
    with (
        GatewayStack(raw / "on", gateway_env={SETTING: str(args.calls)}) as on,
        GatewayStack(raw / "off", gateway_env={SETTING: "0"}) as off,
    ):
        targets = {"on": Target.of(on), "off": Target.of(off)}
        for target in targets.values():  # warm each path (tokenizer, channel, first requests)
            run_gateway(target, CpuMeter(target), bodies, 16, 0, 2.0)
        for concurrency in parse_list(args.concurrency, int):
            for pair in range(args.pairs):
                order = ("off", "on") if pair % 2 == 0 else ("on", "off")
                for mode in order:
                    target = targets[mode]
                    side = run_gateway(target, CpuMeter(target), bodies, concurrency, pair + 1, args.window_s)
                    windows.append({"mode": mode, **asdict(side)})
                    log(f"c={concurrency} pair {pair + 1} {mode:>3}: {side.throughput:6.1f} req/s")
    concurrencies = parse_list(args.concurrency, int)
    report = experiment.report(
        calls=args.calls,
        summary=[summarize(windows, concurrency) for concurrency in concurrencies],
        windows=windows,
    )
    write_report(experiment, report)
    log(f"wrote {run_dir / 'gateway-coalesce-ab.md'}")
    for row in report["summary"]:
        log(f"  c={row['concurrency']}: on/off {row['ratios_on_over_off']} median {row['median_ratio']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
