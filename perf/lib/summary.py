"""summary.md and PNG plots of one perf run, from its points.json.

python -m perf.lib.summary perf/results/<host-tag>/<date>    # re-render after editing this file
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from perf.lib.console import command_parser, table
from perf.lib.points import Point

MARKERS = {"http": "o-", "grpc": "s--"}


# ----------------------------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------------------------


def rows_per_execute(point: Point) -> float:
    return point.model_step.rows_per_execute


def padding_ratio(point: Point) -> float | None:
    return point.custom.padding_ratio


def with_typed_points(record: dict) -> dict:
    """`record` (points.json) with every point in it read as a `Point`: the sweep's and the comparisons'."""
    comparisons = dict(record.get("comparisons", {}))
    if "batching" in comparisons:
        comparisons["batching"] = {
            model: {
                key: Point.from_dict(value) if key in ("on", "off") else value for key, value in r.items()
            }
            for model, r in comparisons["batching"].items()
        }
    if "efficiency_e2e" in comparisons:
        comparisons["efficiency_e2e"] = [Point.from_dict(p) for p in comparisons["efficiency_e2e"]]
    if comparisons.get("padding"):
        comparisons["padding"] = Point.from_dict(comparisons["padding"])
    if "padding_overhead" in comparisons:
        comparisons["padding_overhead"] = {
            overhead: Point.from_dict(p) for overhead, p in comparisons["padding_overhead"].items()
        }
    points = [Point.from_dict(p) for p in record.get("points", [])]
    return {**record, "points": points, "comparisons": comparisons}


def one_minute(load: float | Sequence[float]) -> float:
    """The 1-minute load average: runs before perf.lib.record kept all three."""
    return load if isinstance(load, (int, float)) else load[0]


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def verdict(value: float | None, target: float, higher_is_better: bool) -> str:
    if value is None:
        return "not measured"
    if higher_is_better:
        if value >= target:
            return "**met**"
        return f"**missed** by {100 * (1 - value / target):.0f} % ({value:.2f} vs {target:g})"
    if value <= target:
        return "**met**"
    return f"**missed** by {100 * (value / target - 1):.0f} % ({value:.2f} vs {target:g})"


# ----------------------------------------------------------------------------------------------------------
# Comparisons
# ----------------------------------------------------------------------------------------------------------


def efficiency_numbers(record: dict) -> dict | None:
    comparisons = record.get("comparisons", {})
    e2e_points = [p for p in comparisons.get("efficiency_e2e", []) if p.ok]
    model = None
    for name, result in record.get("inprocess", {}).items():
        if "best" in result:
            model = name
    if not e2e_points or model is None:
        return None
    best_e2e = max(e2e_points, key=lambda p: p.throughput)
    best = record["inprocess"][model]["best"]
    pipeline, embed = best.get("pipeline"), best.get("embed")
    return {
        "model": model,
        "e2e": best_e2e.throughput,
        "e2e_concurrency": best_e2e.concurrency,
        "pipeline": pipeline,
        "embed": embed,
        "ratio": best_e2e.throughput / pipeline if pipeline else None,
        "ratio_model_only": best_e2e.throughput / embed if embed else None,
    }


def padding_points(record: dict) -> list[Point]:
    points = [p for p in record["points"] if p.workload == "text_mixed" and p.ok and padding_ratio(p)]
    return sorted(points, key=lambda p: (p.model, p.protocol, p.concurrency))


def headline_padding(record: dict) -> tuple[Point, list[Point]] | None:
    """The worst text_mixed point of the sweeps (served configuration) and all the batched ones (c > 1)."""
    points = [p for p in padding_points(record) if p.tag == "sweep" and p.concurrency > 1]
    if not points:
        return None
    return max(points, key=lambda point: padding_ratio(point) or 0.0), points


# ----------------------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------------------


def header_lines(record: dict, run_dir: Path) -> list[str]:
    host = record["host"]
    m = record["measurement"]
    lines = [
        f"# Embedding ensemble performance: {run_dir.parent.name}, {run_dir.name}",
        "",
        f"- Machine: {host['cpu']}, {host['cores']} cores ({host['machine']}); torch {host['torch']} "
        f"({host['torch_threads']} threads); tritonserver 2.51 from nvidia-pytriton "
        f"{host.get('nvidia-pytriton', '?')}; perf_analyzer from tritonclient "
        f"{host.get('tritonclient', '?')}; commit {host.get('commit') or '?'}.",
        f"- Command: `{record['command']}`; {record['started']} to {record.get('finished', '?')} "
        f"({record.get('elapsed_s', 0) / 60:.1f} min).",
        f"- Load average before {fmt(one_minute(host['load_before']), 2)}, "
        f"after {fmt(one_minute(host.get('load_after', 0)), 2)}"
        + (
            f"; other busy processes at the start: {'; '.join(host['busy_before'])}"
            if host.get("busy_before")
            else ""
        )
        + ". perf_analyzer runs on the same cores as the server and takes CPU from it.",
        f"- perf_analyzer: `{m['mode']}` measurement (time windows of {m['interval_ms']} ms, stability "
        f"{m['stability']} %, at most {m['max_trials']} windows; if they do not settle, one run of a fixed "
        f"request count sized to ~{m['point_seconds']:.0f} s). Latencies are client-side, in ms.",
        "- Models: "
        + ", ".join(f"`{label}` = {path}" for label, path in record.get("models", {}).items())
        + (
            "; comparisons on " + ", ".join(f"`{name}`" for name in record.get("inprocess", {}))
            if record.get("inprocess")
            else ""
        ),
        "",
    ]
    return lines


def targets_lines(record: dict) -> list[str]:
    targets = record.get("targets", {})
    comparisons = record.get("comparisons", {})
    rows = []
    eff = efficiency_numbers(record)
    if eff:
        rows.append(
            [
                f"Serving efficiency, `{eff['model']}` model, text_200",
                f"{fmt(eff['ratio'], 2)} = {fmt(eff['e2e'])} rows/s end to end (c={eff['e2e_concurrency']}) "
                f"÷ {fmt(eff['pipeline'])} rows/s in-process (preprocess + embed, best batch); vs the model "
                f"step alone ({fmt(eff['embed'])} rows/s): {fmt(eff['ratio_model_only'], 2)}",
                f"≥ {targets.get('efficiency', 0.85)}",
                verdict(eff["ratio"], targets.get("efficiency", 0.85), True),
            ]
        )
    for model, result in comparisons.get("batching", {}).items():
        if "on" in result and "off" in result:
            on, off = result["on"], result["off"]
            rows.append(
                [
                    f"Dynamic batching gain, `{model}`, text_200, c={on.concurrency}",
                    f"{fmt(result.get('gain'), 2)}× = {fmt(on.throughput)} ÷ {fmt(off.throughput)} "
                    "rows/s "
                    f"(rows per execute {fmt(rows_per_execute(on))} vs {fmt(rows_per_execute(off))})",
                    f"≥ {targets.get('batching_gain', 3.0)}×",
                    verdict(result.get("gain"), targets.get("batching_gain", 3.0), True),
                ]
            )
    headline = headline_padding(record)
    padding = comparisons.get("padding")
    if headline:
        worst, batched = headline
        ratios = [ratio for ratio in map(padding_ratio, batched) if ratio is not None]
        rows.append(
            [
                "Padding waste, text_mixed, worst sweep point with batching (c > 1), served config",
                f"{fmt(padding_ratio(worst), 3)} padded ÷ real tokens (`{worst.model}`, "
                f"{worst.protocol}, c={worst.concurrency}, "
                f"{fmt(rows_per_execute(worst))} rows per execute); "
                f"{fmt(min(ratios), 3)}–{fmt(max(ratios), 3)} over {len(batched)} points",
                f"≤ {targets.get('padding', 1.15)}",
                verdict(padding_ratio(worst), targets.get("padding", 1.15), False),
            ]
        )
    elif padding:
        rows.append(
            [
                f"Padding waste, text_mixed, `{padding.model}`, c={padding.concurrency}",
                f"{fmt(padding_ratio(padding), 3)} padded ÷ real tokens",
                f"≤ {targets.get('padding', 1.15)}",
                verdict(padding_ratio(padding), targets.get("padding", 1.15), False),
            ]
        )
    for overhead, point in sorted(
        comparisons.get("padding_overhead", {}).items(), key=lambda item: -int(item[0])
    ):
        served = str(record["host"].get("served_batch_overhead_tokens", 256))  # 256 before it was recorded
        if point.ok and overhead != served:
            rows.append(
                [
                    f"… with `batch_overhead_tokens` {overhead} instead of {served} (variant config), "
                    f"`{point.model.split('-')[0]}`, c={point.concurrency}",
                    f"{fmt(padding_ratio(point), 3)} padded ÷ real tokens, {fmt(point.throughput)} infer/s",
                    f"≤ {targets.get('padding', 1.15)}",
                    verdict(padding_ratio(point), targets.get("padding", 1.15), False),
                ]
            )
    if not rows:
        return []
    return ["## Targets", "", *table(["target", "measured", "goal", "status"], rows), ""]


def profile_lines(record: dict) -> list[str]:
    points = [p for p in record["points"] if p.profile]
    if not points:
        return []
    lines = [
        "## Where the time goes (py-spy during the runs named, CPU from /proc)",
        "",
        "CPU = cores the step's processes used on average over the run. The breakdown is of py-spy's samples "
        "of those processes while they were not waiting for work; time blocked in a native call (e.g. the "
        "server's answer to a metric update) counts there although it uses no CPU.",
        "",
    ]
    rows = []
    for p in points:
        for model, entry in p.profile.items():
            top = ", ".join(f"{label} {share:.0%}" for label, share in list(entry["categories"].items())[:5])
            leaves = ", ".join(f"`{name}` {share:.0%}" for name, share in entry["top_leaves"][:3])
            rows.append(
                [
                    f"{p.tag} c={p.concurrency}",
                    p.model,
                    f"{model} ×{entry['processes']}",
                    fmt(p.cpu.get(model), 2),
                    top,
                    leaves,
                ]
            )
    lines += table(["run", "server", "step", "CPU (cores)", "samples by part", "hottest functions"], rows)
    lines.append("")
    return lines


def cpu_lines(record: dict) -> list[str]:
    """Cores each process used during the comparison runs: how the 2 cores were shared."""
    points = [p for p in record["points"] if p.tag != "sweep" and p.ok and len(p.cpu) > 1]
    if not points:
        return []
    roles = ["qwen3_vl_embedding_model", "qwen3_vl_embedding_preprocess", "tritonserver", "perf_analyzer"]
    rows = []
    for p in points:
        cpu = p.cpu
        rows.append(
            [p.tag, p.model, str(p.concurrency), fmt(p.throughput)]
            + [fmt(cpu.get(role), 2) for role in roles]
            + [fmt(sum(cpu.values()), 2), fmt(p.load1, 2)]
        )
    header = [
        "run",
        "server",
        "conc",
        "infer/s",
        "model step",
        "preprocess (all)",
        "tritonserver",
        "perf_analyzer",
    ]
    return [
        f"CPU used during the comparison runs, in cores (CPU seconds ÷ wall seconds, from /proc and the "
        f"client's rusage); the machine has {record['host']['cores']}. Load = 1-minute load average at the "
        "end.",
        "",
        *table(header + ["total", "load"], rows),
        "",
    ]


def sweep_lines(record: dict, run_dir: Path) -> list[str]:
    points = [p for p in record["points"] if p.tag == "sweep"]
    if not points:
        return []
    lines = ["## Sweeps", ""]
    by_model: dict[str, list[Point]] = defaultdict(list)
    for point in points:
        by_model[point.model].append(point)
    for model, model_points in by_model.items():
        lines += [f"### `{model}`", ""]
        rows = []
        for p in model_points:
            if not p.ok:
                rows.append(
                    [p.workload, p.protocol, str(p.concurrency), "failed: " + p.error[:80]] + [""] * 10
                )
                continue
            rows.append(
                [
                    p.workload,
                    p.protocol,
                    str(p.concurrency),
                    fmt(p.throughput),
                    fmt(p.p50_ms),
                    fmt(p.p90_ms),
                    fmt(p.p99_ms),
                    f"{fmt(p.preprocess_step.queue_ms)} / {fmt(p.preprocess_step.compute_infer_ms)}",
                    f"{fmt(p.model_step.queue_ms)} / {fmt(p.model_step.compute_ms)}",
                    f"{fmt(rows_per_execute(p))} / {p.model_step.max_batch}",
                    fmt(padding_ratio(p), 3),
                    fmt(p.custom.tokens_per_row, 0),
                    fmt(p.custom.tokens_per_second, 0),
                ]
            )
        lines += table(
            [
                "workload",
                "proto",
                "conc",
                "infer/s",
                "p50",
                "p90",
                "p99",
                "preprocess queue / compute",
                "model queue / compute",
                "rows per execute (mean / max)",
                "padded ÷ real",
                "tokens / row",
                "tokens / s",
            ],
            rows,
        )
        lines.append("")
        lines += [
            f"![throughput vs concurrency, {model}](throughput_vs_concurrency-{model}.png)",
            f"![latency vs throughput, {model}](latency_vs_throughput-{model}.png)",
            "",
        ]
        lines += batch_histogram_lines(model_points)
        lines += preprocess_lines(model_points)
    return lines


def batch_histogram_lines(points: list[Point]) -> list[str]:
    buckets = ["1", "2", "4", "8", "16", "32", "64", "128", "256", "+Inf"]
    rows = []
    for p in points:
        histogram = p.custom.rows_per_execute
        if p.ok and histogram:
            rows.append(
                [p.workload, p.protocol, str(p.concurrency)]
                + [fmt(histogram.get(b), 0) if histogram.get(b) else "" for b in buckets[:8]]
            )
    if not rows:
        return []
    return [
        "Batch sizes seen by the model step: execute() calls by rows handed over "
        "(`qwen3vl_rows_per_execute` histogram; column = bucket upper bound).",
        "",
        *table(["workload", "proto", "conc", *[f"≤{b}" for b in buckets[:8]]], rows),
        "",
    ]


def preprocess_lines(points: list[Point]) -> list[str]:
    rows = []
    for p in points:
        per_item = p.custom.preprocess_ms_per_item()
        if p.ok and per_item and p.protocol == "http":
            custom = p.custom
            rows.append(
                [
                    p.workload,
                    str(p.concurrency),
                    *[fmt(per_item.get(modality), 2) for modality in ("text", "image", "video")],
                    fmt(custom.forward_ms_per_row, 2),
                    fmt(custom.rows_per_forward),
                ]
            )
    if not rows:
        return []
    return [
        "Custom metrics (HTTP points): preprocessing ms from `qwen3vl_preprocess_seconds_total` — prompt "
        "+ tokenise per row, image and video decoding per row holding one (÷ "
        "`qwen3vl_preprocess_items_total`) — and model forward ms per row and rows per forward "
        "(`qwen3vl_forward_seconds_total`, `qwen3vl_micro_batches_total`).",
        "",
        *table(
            ["workload", "conc", "prompt ms", "image ms", "video ms", "forward ms / row", "rows / forward"],
            rows,
        ),
        "",
    ]


def batching_lines(record: dict) -> list[str]:
    """Dynamic batching on vs off, side by side."""
    comparisons = record.get("comparisons", {})
    if not comparisons.get("batching"):
        return []
    lines = [
        "## Dynamic batching on vs off",
        "",
        "Same model, same text_200 data, HTTP; `off` is a copy of the repository whose "
        "`qwen3_vl_embedding_model` config has no `dynamic_batching` block.",
        "",
    ]
    rows = []
    for model, result in comparisons["batching"].items():
        for state in ("on", "off"):
            p = result.get(state)
            if p and p.ok:
                rows.append(
                    [
                        model,
                        state,
                        str(p.concurrency),
                        fmt(p.throughput),
                        fmt(p.p50_ms),
                        fmt(p.p99_ms),
                        fmt(rows_per_execute(p)),
                        fmt(p.model_step.compute_ms),
                        fmt(p.model_step.queue_ms),
                    ]
                )
    header = "model|batching|conc|infer/s|p50|p99|rows per execute|model compute ms / execute|model queue ms"
    lines += table(header.split("|"), rows)
    lines.append("")
    return lines


def efficiency_lines(record: dict) -> list[str]:
    """The in-process baseline and the end-to-end runs it is compared with."""
    eff = efficiency_numbers(record)
    if not eff:
        return []
    lines: list[str] = []
    result = record["inprocess"][eff["model"]]
    lines += [
        "## Serving efficiency",
        "",
        f"In-process baseline (`perf/lib/inprocess.py`, {result['device']}, {result['dtype']}, "
        f"{result['torch_threads']} torch threads, {fmt(result['mean_tokens'], 0)} tokens per row, no "
        "server running): rows/s by batch size.",
        "",
    ]
    modes = list(result["modes"])
    batches = sorted({int(b) for rates in result["modes"].values() for b in rates})
    lines += table(
        ["mode", *[f"batch {b}" for b in batches]],
        [[mode, *[fmt(result["modes"][mode].get(str(b))) for b in batches]] for mode in modes],
    )
    lines += ["", "End to end through the ensemble (HTTP):", ""]
    lines += table(
        ["conc", "infer/s", "p50", "p99", "rows per execute"],
        [
            [
                str(p.concurrency),
                fmt(p.throughput),
                fmt(p.p50_ms),
                fmt(p.p99_ms),
                fmt(rows_per_execute(p)),
            ]
            for p in record["comparisons"].get("efficiency_e2e", [])
            if p.ok
        ],
    )
    lines.append("")
    return lines


def padding_overhead_lines(record: dict) -> list[str]:
    """Padding against the planner's `batch_overhead_tokens`."""
    overheads = record.get("comparisons", {}).get("padding_overhead", {})
    if not overheads:
        return []
    lines = [
        "## Padding vs the planner's `batch_overhead_tokens`",
        "",
        "text_mixed over HTTP on copies of the repository that differ only in the model step's "
        "`batch_overhead_tokens` (what one more forward pass is assumed to cost, in padded tokens; "
        "default 256). Lower values split micro-batches more often: less padding, more forward passes.",
        "",
    ]
    rows = []
    for overhead, p in sorted(overheads.items(), key=lambda item: -int(item[0])):
        if p.ok:
            custom = p.custom
            rows.append(
                [
                    overhead,
                    str(p.concurrency),
                    fmt(padding_ratio(p), 3),
                    fmt(custom.rows_per_forward),
                    fmt(rows_per_execute(p)),
                    fmt(p.throughput),
                    fmt(p.p50_ms),
                    fmt(p.p99_ms),
                ]
            )
    lines += table(
        "batch_overhead_tokens|conc|padded ÷ real|rows / forward|rows / execute|infer/s|p50|p99".split("|"),
        rows,
    )
    lines.append("")
    return lines


def padding_waste_lines(record: dict) -> list[str]:
    """Padding waste of the text_mixed points."""
    points = padding_points(record)
    if not points:
        return []
    lines = [
        "## Padding waste on text_mixed",
        "",
        "`qwen3vl_padded_tokens_total` ÷ `qwen3vl_tokens_total` over each run (rows × longest row per "
        "micro-batch ÷ real tokens).",
        "",
    ]
    lines += table(
        ["model", "proto", "conc", "padded ÷ real", "rows per execute", "rows per forward"],
        [
            [
                p.model,
                p.protocol,
                str(p.concurrency),
                fmt(padding_ratio(p), 3),
                fmt(rows_per_execute(p)),
                fmt(p.custom.rows_per_forward),
            ]
            for p in points
        ],
    )
    lines.append("")
    return lines


def comparison_lines(record: dict) -> list[str]:
    return (
        batching_lines(record)
        + efficiency_lines(record)
        + padding_overhead_lines(record)
        + padding_waste_lines(record)
    )


def cache_hits_note(points: Iterable[Point]) -> str | None:
    """Which points Triton's response cache answered in part (its hits are in their throughput and
    latency: the served ensembles enable the cache whenever the server has one), or None."""
    hit = [point for point in points if point.cache_hits]
    if not hit:
        return None
    where = ", ".join(
        f"{point.model} {point.workload} {point.protocol} c={point.concurrency} "
        f"({point.cache_hits} of {point.stage(point.ensemble).requests})"
        for point in hit
    )
    return (
        f"Response-cache hits were counted in {len(hit)} point(s): {where}. The server has a response cache "
        "(`--cache-config`) and the workload's requests repeat, so those answers skipped both steps."
    )


def cache_lines(record: dict) -> list[str]:
    note = cache_hits_note(record["points"])
    return [f"**{note}**", ""] if note else []


def write(run_dir: Path, record: dict) -> Path:
    """summary.md and the plots of `record` (points.json as written, its points as dicts)."""
    run_dir = Path(run_dir)
    record = with_typed_points(record)
    lines = header_lines(record, run_dir)
    lines += targets_lines(record)
    lines += cache_lines(record)
    notes = run_dir / "NOTES.md"
    if notes.exists():
        lines += ["Analysis of these numbers: [NOTES.md](NOTES.md).", ""]
    lines += profile_lines(record)
    lines += cpu_lines(record)
    lines += sweep_lines(record, run_dir)
    lines += comparison_lines(record)
    lines += ["Raw perf_analyzer rows: `csv/`; everything measured: `points.json`.", ""]
    plot(run_dir, record)
    path = run_dir / "summary.md"
    path.write_text("\n".join(lines))
    return path


# ----------------------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------------------


def _save_log_plot(fig, ax, path: Path) -> Path:
    """Log y axis, grid, legend, tight layout; written to `path` and closed."""
    import matplotlib.pyplot as plt

    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot(run_dir: Path, record: dict) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [p for p in record["points"] if p.tag == "sweep" and p.ok]
    by_model: dict[str, list[Point]] = defaultdict(list)
    for point in points:
        by_model[point.model].append(point)
    written = []
    for model, model_points in by_model.items():
        series: dict[tuple[str, str], list[Point]] = defaultdict(list)
        for p in model_points:
            series[(p.workload, p.protocol)].append(p)
        workloads = list(dict.fromkeys(p.workload for p in model_points))
        colors = {w: plt.get_cmap("tab10")(i) for i, w in enumerate(workloads)}

        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=90)
        for (workload, protocol), items in series.items():
            items.sort(key=lambda p: p.concurrency)
            ax.plot(
                [p.concurrency for p in items],
                [p.throughput for p in items],
                MARKERS.get(protocol, "o-"),
                color=colors[workload],
                label=f"{workload} ({protocol})",
                markersize=4,
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (requests in flight)")
        ax.set_ylabel("throughput (requests/s, 1 row each)")
        ax.set_title(f"{model}: throughput vs concurrency")
        written.append(_save_log_plot(fig, ax, run_dir / f"throughput_vs_concurrency-{model}.png"))

        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=90)
        for (workload, protocol), items in series.items():
            if protocol != "http" and ("http" in {p for w, p in series if w == workload}):
                continue  # one protocol per workload keeps the chart readable; the CSVs have both
            items.sort(key=lambda p: p.concurrency)
            xs = [p.throughput for p in items]
            for quantile, style in (("p50", "o-"), ("p99", "v:")):
                ys = [getattr(p, f"{quantile}_ms") for p in items]
                label = f"{workload} {quantile}"
                ax.plot(xs, ys, style, color=colors[workload], markersize=4, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("throughput (requests/s)")
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"{model}: latency vs throughput (points = concurrency 1…max)")
        written.append(_save_log_plot(fig, ax, run_dir / f"latency_vs_throughput-{model}.png"))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("perf.lib.summary", __doc__)
    parser.add_argument("run_dir", type=Path, help="a run's directory, with its points.json")
    run_dir = parser.parse_args(argv).run_dir
    print(write(run_dir, json.loads((run_dir / "points.json").read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
