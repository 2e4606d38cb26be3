"""Hostile bodies at the gateway's door (issue 19, item 1), as a measurement of its own and a phase of
``make reliability``:

    python -m perf.drills.gateway_bodies [--mb 60] [--only "token ids"] [--out DIR]

The measurement behind perf/results/cpu-x86_64-2c/2026-12-07/gateway-bodies.md: one fresh gateway per body
(``python -m gateway``, default settings, ``TRITON_GRPC_URL=127.0.0.1:1``: no Triton, so a body that passes
every door check ends in 503 "Triton cannot describe"), the body sent while ``GET /metrics`` goes every 0.1 s
alongside (perf.drills.hostile_bodies builds the bodies and sends them). Per body: the answer and its
time, the small requests' worst latency, the gateway's RSS after and its peak (VmHWM). The issue's goals:
every body answered within 5 s, peak RSS under 1 GB, the small request answered within 1 s throughout.
Writes perf/results/<host>/<date>/gateway-bodies-run.{json,md}.
"""

from __future__ import annotations

import sys

from perf.lib.console import add_out_argument, command_parser
from perf.lib.record import Experiment
from tools.gateway_process import GatewayProcess

ANSWERED_WITHIN_S = 5.0
PEAK_RSS_MB = 1000.0
SMALL_WITHIN_S = 1.0
# No Triton: every body that passes the door is answered 503 at once.
NO_TRITON = "127.0.0.1:1"


def measure(mb: float = 60.0, only: list[str] | None = None) -> list[dict]:
    """One row per body, each against a fresh gateway."""
    from perf.drills.hostile_bodies import BODIES, attack, peak_rss_mb

    size = int(mb * 1_000_000)
    rows = []
    for name, build in BODIES.items():
        if only and name not in only:
            continue
        path, body = build(size)
        with GatewayProcess(NO_TRITON, wait_for="/metrics") as gateway:
            start_rss, _ = peak_rss_mb(gateway.pid)
            result = attack(gateway.url, path, body)
            rss, peak = peak_rss_mb(gateway.pid)
        row = {
            "body": name,
            "mb": round(len(body) / 1e6, 1),
            **result,
            "seconds": round(result["seconds"], 3),
            "small_worst": None if result["small_worst"] is None else round(result["small_worst"], 3),
            "rss_start_mb": round(start_rss),
            "rss_after_mb": round(rss),
            "rss_peak_mb": round(peak),
        }
        row["within_goals"] = (
            row["seconds"] <= ANSWERED_WITHIN_S
            and peak <= PEAK_RSS_MB
            and (row["small_worst"] or 0.0) <= SMALL_WITHIN_S
        )
        print(f"gateway-bodies: {row}", flush=True)
        rows.append(row)
    return rows


def report_lines(rows: list[dict]) -> list[str]:
    return [
        f"Goals: answered within {ANSWERED_WITHIN_S:g} s, peak RSS under {PEAK_RSS_MB:g} MB, a small request "
        f"(GET /metrics every 0.1 s) answered within {SMALL_WITHIN_S:g} s throughout; one fresh gateway per "
        "body, no Triton behind it.",
        "",
        "| body | size | answer | in | small requests (worst) | RSS start / after / peak | goals |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {row['body']} | {row['mb']} MB | {row['status']} {row['message'][:70]!r} | "
            f"{row['seconds']} s | {row['small_count']} ({row['small_worst']} s) | "
            f"{row['rss_start_mb']} / {row['rss_after_mb']} / {row['rss_peak_mb']} MB | "
            f"{'met' if row['within_goals'] else '**missed**'} |"
            for row in rows
        ],
    ]


def main(argv: list[str] | None = None) -> int:
    from perf.drills.hostile_bodies import BODIES

    parser = command_parser("perf.drills.gateway_bodies", __doc__)
    parser.add_argument("--mb", type=float, default=60.0, help="body size in MB (default 60)")
    parser.add_argument("--only", choices=sorted(BODIES), action="append")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    experiment = Experiment("perf.drills.gateway_bodies", argv, args.out)
    rows = measure(args.mb, args.only)
    report = experiment.report(bodies=rows)
    experiment.write_json("gateway-bodies-run.json", report)
    lines = [*experiment.heading("Hostile bodies at the gateway's door", report), *report_lines(rows)]
    experiment.write_markdown("gateway-bodies-run.md", lines, echo=True)
    return 0 if all(row["within_goals"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
