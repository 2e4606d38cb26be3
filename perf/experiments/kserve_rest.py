"""KServe v2 REST through the gateway (issue 19, item 2): hostile bodies at the published port, and
``perf_analyzer -i http`` through the gateway vs straight to Triton's own (loopback) HTTP port, interleaved.

One stack (``perf.gateway_stack``: tritonserver 2.51 from the wheel + the gateway, tiny checkpoint):
1. every body of ``perf.drills.kserve_hostile`` sent to the gateway, a small request alongside: status,
   time, the gateway's RSS after and at peak;
2. rounds of perf_analyzer (text, one row per request, ``--concurrency``), gateway then Triton, each with a
   fixed request count; per round: throughput, latency, and CPU seconds per request of the gateway's and
   Triton's process groups (read from /proc: a measure that survives a shared machine better than rates);
3. with ``--crash-triton``: the 120 KB deep-JSON body sent to Triton's own HTTP port, what the gateway now
   keeps from clients (the server is expected to die; it is the last step).

    python -m perf.experiments.kserve_rest [--rounds 3] [--concurrency 4] [--requests 40] [--crash-triton]

Writes ``gateway-kserve.json`` and ``.md`` into today's results directory.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from perf.drills import kserve_hostile
from perf.drills.hostile_bodies import peak_rss_mb
from perf.gateway_stack import GatewayStack
from perf.lib.console import command_parser, log
from perf.lib.perf_analyzer import perf_analyzer_binary, perf_analyzer_env
from perf.lib.record import Experiment, load_1m
from perf.lib.sampling import group_cpu_seconds

MODEL = "qwen3_vl_embedding"
TEXT = "The capital of China is Beijing. " * 6  # ~60 tokens


def ensemble_successes(http_url: str) -> int:
    import tritonclient.http as http

    client = http.InferenceServerClient(http_url)
    try:
        stats = client.get_inference_statistics(MODEL)["model_stats"][0]
        return int(stats["inference_stats"]["success"]["count"])
    finally:
        client.close()


def perf_analyzer(url: str, data: Path, concurrency: int, requests: int, csv: Path) -> dict:
    command = [
        perf_analyzer_binary(),
        *("-m", MODEL, "-i", "http", "-u", url, "--input-data", str(data)),
        *("--concurrency-range", str(concurrency), "-f", str(csv)),
        *("--measurement-mode", "count_windows", "--measurement-request-count", str(requests)),
        *("--stability-percentage", "100", "--max-trials", "3"),
    ]
    result = subprocess.run(command, env=perf_analyzer_env(), capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        return {"ok": False, "error": (result.stdout + result.stderr)[-600:]}
    header, row = csv.read_text().splitlines()[:2]
    values = dict(zip(header.split(","), row.split(",")))
    return {
        "ok": True,
        "throughput": float(values["Inferences/Second"]),
        "latency_p50_ms": float(values["p50 latency"]) / 1000,
        "latency_p99_ms": float(values["p99 latency"]) / 1000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("perf.experiments.kserve_rest", __doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=40, help="requests per perf_analyzer window")
    parser.add_argument("--crash-triton", action="store_true")
    args = parser.parse_args(argv)
    experiment = Experiment("perf.experiments.kserve_rest", argv)
    work = Path(tempfile.mkdtemp(prefix="kserve-rest-"))
    stack = GatewayStack(work / "logs").start()
    assert stack.server is not None and stack.gateway is not None and stack.server.pid is not None
    gateway, server, server_pid = stack.gateway, stack.server, stack.server.pid
    results: dict = {"hostile": [], "rounds": []}
    try:
        log(f"gateway {gateway.url} (pid {gateway.pid}); Triton HTTP {server.http_url}")
        results["gateway_rss_start_mb"] = round(peak_rss_mb(gateway.pid)[0])
        for name, build in kserve_hostile.BODIES.items():
            body = build()
            outcome = kserve_hostile.attack(gateway.url, body)
            rss, peak = peak_rss_mb(gateway.pid)
            outcome.update(
                body=name, size_mb=round(len(body[1]) / 1e6, 2), rss_mb=round(rss), peak_mb=round(peak)
            )
            outcome["load"] = load_1m()
            results["hostile"].append(outcome)
            log(f"{name}: {outcome['status']} in {outcome['seconds'] * 1000:.0f} ms")
        data = work / "data.json"
        data.write_text(json.dumps({"data": [{"TEXT": {"content": [TEXT], "shape": [1]}}]}))
        targets = {"gateway": gateway.url.removeprefix("http://"), "triton": server.http_url}
        for round_index in range(args.rounds):
            for target, url in targets.items():
                load = load_1m()
                served = ensemble_successes(server.http_url)
                cpu = {"gateway": group_cpu_seconds(gateway.pid), "triton": group_cpu_seconds(server_pid)}
                started = time.monotonic()
                point = perf_analyzer(url, data, args.concurrency, args.requests, work / f"{target}.csv")
                seconds = time.monotonic() - started
                count = ensemble_successes(server.http_url) - served
                # Whether or not perf_analyzer called its windows stable (on a loaded host it often does
                # not): what Triton served over the whole run, warm-up windows included.
                point["served_per_s"] = round(count / seconds, 2)
                for role, before in cpu.items():
                    pid = gateway.pid if role == "gateway" else server_pid
                    spent = group_cpu_seconds(pid) - before
                    point[f"{role}_cpu_ms_per_request"] = round(1000 * spent / count, 2) if count else None
                point.update(
                    target=target, round=round_index, requests=count, load_before=load, load_after=load_1m()
                )
                results["rounds"].append(point)
                log(f"round {round_index} {target}: {point}")
        if args.crash_triton:
            # The whole-body nesting first (answered), then nesting inside a tensor's data (the crash).
            crashes = []
            for build in (kserve_hostile.deep_json, kserve_hostile.deep_data):
                path, deep, headers = build()
                status, message, seconds = kserve_hostile.send(
                    f"http://{server.http_url}", path, deep, headers
                )
                time.sleep(2.0)
                crashes.append(
                    {
                        "body": build.__name__,
                        "status": status,
                        "message": message[:160],
                        "seconds": round(seconds, 3),
                        "server_exit_code": server.returncode,
                    }
                )
            results["triton_http_deep_json"] = crashes
    finally:
        stack.stop()
    report = experiment.report(**results, concurrency=args.concurrency, requests_per_window=args.requests)
    experiment.write_json("gateway-kserve.json", report)
    experiment.write_markdown("gateway-kserve-run.md", markdown(experiment, report), echo=True)
    return 0


def markdown(experiment: Experiment, report: dict) -> list[str]:
    lines = experiment.heading("KServe v2 REST through the gateway (issue 19, item 2)", report)
    lines += [
        f"Gateway RSS at start {report['gateway_rss_start_mb']} MB.",
        "",
        "| body | size | status | answered in | small requests (worst) | gateway RSS after / peak | load |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["hostile"]:
        lines.append(
            f"| {row['body']} | {row['size_mb']} MB | {row['status']} | {row['seconds'] * 1000:.0f} ms "
            f"| {row['small_count']} ({(row['small_worst'] or 0) * 1000:.0f} ms) | {row['rss_mb']} / "
            f"{row['peak_mb']} MB | {row['load']} |"
        )
    lines += [
        "",
        f"perf_analyzer -i http, concurrency {report['concurrency']}, interleaved:",
        "",
        "| round | target | served/s (whole run) | perf_analyzer infer/s, p50, p99 ms | gateway CPU ms/req "
        "| Triton CPU ms/req | load |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["rounds"]:
        analyzer = (
            f"{row['throughput']:.2f}, {row['latency_p50_ms']:.0f}, {row['latency_p99_ms']:.0f}"
            if row["ok"]
            else "not stable"
        )
        lines.append(
            f"| {row['round']} | {row['target']} | {row['served_per_s']} | {analyzer} "
            f"| {row['gateway_cpu_ms_per_request']} | {row['triton_cpu_ms_per_request']} "
            f"| {row['load_before']} / {row['load_after']} |"
        )
    ratios = []
    rounds: dict[int, dict[str, dict]] = {}
    for row in report["rounds"]:
        rounds.setdefault(row["round"], {})[row["target"]] = row
    for pair in rounds.values():
        if all(pair.get(t, {}).get("served_per_s") for t in ("gateway", "triton")):
            ratios.append(pair["gateway"]["served_per_s"] / pair["triton"]["served_per_s"])
    if ratios:
        lines += [
            "",
            f"Gateway / Triton served/s per round: {', '.join(f'{r:.2f}' for r in ratios)} "
            f"(median {statistics.median(ratios):.2f}).",
        ]
    crash = report.get("triton_http_deep_json")
    if crash:
        lines += ["", "The same deep bodies at Triton 2.51's own HTTP port (loopback only now):", ""]
        lines += [f"- {each}" for each in crash]
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
