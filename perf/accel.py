"""`make perf-accel SIZE=2b|8b|tiny DEVICE=cuda|npu|cpu`: the vLLM-Ascend tutorial's benchmark on a device.

    python -m perf.accel --size 8b --device cuda [--concurrency 256] [--budget-s 570]

In one command, within --budget-s (10 minutes minus a margin by default):
  1. build the real 2B / 8B architecture with random weights on the device (no download; tiny / bench use
     their CPU checkpoints), written as a Hugging Face checkpoint under models/;
  2. serve it through model_repository/ (a copy whose model step takes bigger batches on an accelerator:
     --max-rows rows per micro-batch and per execute, --token-budget), with DEVICE set and COMPILE from
     --serve-compile (auto: the model step compiles its text forward at load on CUDA);
  3. text_200 as the tutorial runs it (1,000 requests of 200 random tokens, all in flight at once up to
     --concurrency; HTTP), after a short warm-up, then image_448;
  4. stop the server and time the bare model in-process on the same device: forward + last-token pool +
     L2 norm over equal 200-token rows, eager at each --bare-batches size, then torch.compile at the best
     one, so the report can say serving throughput / best bare throughput.

Writes perf/results/<host-tag>/<date>/accel-<size>.md and .json (and csv/ rows). Runs on a CPU-only machine
with --size tiny --device cpu.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from perf.lib.console import command_parser, log, table
from perf.lib.host import RESULTS, accelerator_name, cpu_name, host_tag
from perf.lib.inprocess import in_subprocess
from perf.lib.measure import measure
from perf.lib.paths import REPO
from perf.lib.perf_analyzer import Measurement, last_throughput
from perf.lib.pipelines import MODEL_STEP, NAMED_MODELS, PREPROCESS, model_path
from perf.lib.points import Point
from perf.lib.record import Experiment
from perf.lib.servers import Endpoint, start_server
from perf.lib.summary import fmt
from perf.lib.variants import (
    compose,
    variant_repository,
    with_instance_count,
    with_max_batch_size,
    with_parameter,
)
from perf.lib.workloads import generate

TUTORIAL = {
    "requests": 1000,
    "duration_s": 19.53,
    "req_per_s": 51.20,
    "tok_per_s": 10240.42,
    "mean_e2el_ms": 10360.53,
    "p99_e2el_ms": 19423.21,
}
ACCEL_TARGET = 0.90


def checkpoint(size: str, device: str) -> Path:
    if size in NAMED_MODELS:
        return model_path(size)
    from tools.checkpoint import build_tiny_checkpoint, is_complete_checkpoint

    path = REPO / "models" / f"qwen3-vl-embedding-{size}-random"
    if not is_complete_checkpoint(path):
        from backend.runtime.platforms import resolve_platform

        platform = resolve_platform(device)  # on Ascend this imports torch_npu, which registers the device
        started = time.monotonic()
        log(f"building the {size} architecture with random weights on {device} into {path} ...")
        build_tiny_checkpoint(path, kind="embedding", size=size, device=device)
        # The weights were made on the device in this process; the server loads its own copy.
        platform.empty_cache()
        log(f"  built in {time.monotonic() - started:.0f} s")
    return path


def resolve_device(device: str) -> str:
    """`auto` -> the device backend.runtime.platforms picks (NPU, else CUDA, else CPU), as `kind[:index]`."""
    if device != "auto":
        return device
    from backend.runtime.platforms import resolve_platform

    return str(resolve_platform("auto").device)


def serving_repository(
    dest: Path, max_rows: int, token_budget: int, preprocess_instances: int, model_instances: int = 1
) -> Path:
    """The repository with the model step allowed `max_rows` rows per execute and per micro-batch, and
    `model_instances` instances of it (several share one GPU: instance k uses device k modulo the count;
    each holds its own weights, and one's CPU work overlaps another's forward)."""
    model_edit = compose(
        with_max_batch_size(max_rows),
        with_instance_count(model_instances),
        with_parameter("max_rows_per_batch", str(max_rows)),
        with_parameter("token_budget", str(token_budget)),
    )
    edits = {MODEL_STEP: model_edit}
    if preprocess_instances:
        edits[PREPROCESS] = with_instance_count(preprocess_instances)
    return variant_repository(dest, edits)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = command_parser("perf.accel", __doc__)
    parser.add_argument("--size", default="tiny", choices=("tiny", "bench", "2b", "8b"))
    parser.add_argument("--device", default="auto", help="cuda, npu, cpu or auto")
    parser.add_argument("--concurrency", type=int, default=0, help="default: 256 on accelerators, 64 on CPU")
    parser.add_argument("--requests", type=int, default=TUTORIAL["requests"])
    parser.add_argument(
        "--image-requests", type=int, default=0, help="default: 500 on accelerators, 4 x concurrency on CPU"
    )
    parser.add_argument(
        "--max-rows",
        type=int,
        default=0,
        help="rows per execute / micro-batch; default 256 (accel), 64 (CPU)",
    )
    parser.add_argument("--token-budget", type=int, default=0, help="default 65536 (accel), 16384 (CPU)")
    parser.add_argument("--preprocess-instances", type=int, default=0, help="default 4 (accel), 2 (CPU)")
    parser.add_argument("--model-instances", type=int, default=1, help="model step instances (same device)")
    parser.add_argument("--bare-batches", default="", help="default 64,128,256 (accel), 1,16,64 (CPU)")
    parser.add_argument(
        "--no-compile", dest="compile", action="store_false", help="skip the bare compiled timing"
    )
    parser.add_argument(
        "--serve-compile",
        default="auto",
        choices=("auto", "on", "off"),
        help="the served model step's `compile` (auto = on for CUDA)",
    )
    parser.add_argument("--budget-s", type=float, default=570.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def settings_for(args: argparse.Namespace, accel: bool) -> dict:
    """The options left at 0 / empty filled with the accelerator's or the CPU's defaults."""
    concurrency = args.concurrency or (256 if accel else 64)
    return {
        "concurrency": concurrency,
        "requests": args.requests,
        "image_requests": args.image_requests or (500 if accel else 4 * concurrency),
        "max_rows": args.max_rows or (256 if accel else 64),
        "token_budget": args.token_budget or (65536 if accel else 16384),
        "preprocess_instances": args.preprocess_instances or (4 if accel else 2),
        "model_instances": args.model_instances,
        "bare_batches": args.bare_batches or ("64,128,256" if accel else "1,16,64"),
        "serve_compile": args.serve_compile,
    }


class Timeline:
    """Seconds since the start at each step, logged as they happen; what is left of the budget."""

    def __init__(self, budget_s: float) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + budget_s
        self.steps: dict[str, float] = {}

    def mark(self, step: str) -> None:
        self.steps[step] = round(time.monotonic() - self.started, 1)
        log(f"[{self.steps[step]:6.1f} s] {step}")

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


def measure_served(
    endpoint: Endpoint, size: str, settings: dict, data: dict[str, Path], run_dir: Path, timeline: Timeline
) -> dict[str, dict]:
    """Warm-up, then text_200 and image_448 as the tutorial sends them: a fixed number of requests."""
    concurrency = settings["concurrency"]
    # Warm-up in time windows (perf_analyzer's --request-count mode sometimes hangs; windows never
    # did); everything compiles at load, so a warm-up that takes minutes is a stall: cut it short.
    warm = Measurement(mode="windows", interval_ms=2000, max_trials=2, timeout_s=120)
    warm_point = measure(
        endpoint, "text_200", data["text_200"], "http", concurrency, warm, run_dir, "accel-warmup"
    )
    timeline.mark("warm-up done")
    points = {}
    for workload, count in (("text_200", settings["requests"]), ("image_448", settings["image_requests"])):
        remaining = timeline.remaining()
        if remaining < 60:
            log(f"skipping {workload}: {remaining:.0f} s left")
            continue
        # A hang is cut after several times the expected length (text_200's rate is known from the warm-up)
        # and retried once (perf.lib.perf_analyzer).
        rate = warm_point.throughput or last_throughput(
            run_dir / "raw" / f"accel-warmup-{endpoint.label}-text_200-http-c{concurrency}.log"
        )  # an unsettled warm-up still printed its windows' rates
        expected = count / rate if workload == "text_200" and rate else 120
        timeout = min(300, max(60, 30 + 4 * expected), (remaining - 30) / 2)
        measurement = Measurement(mode="count", request_count=count, timeout_s=timeout)
        point = measure(
            endpoint, workload, data[workload], "http", concurrency, measurement, run_dir, f"accel-{size}"
        )
        points[workload] = point.as_dict()
        log(f"  {workload} c={concurrency}: {point.describe()}")
        timeline.mark(f"{workload} measured")
    return points


def time_bare_model(model: Path, device: str, settings: dict, compile: bool, out: Path, remaining: float):
    """The bare model in a fresh interpreter once the server is gone: eager, then compiled at the best
    batch."""
    options = [
        "--device",
        device,
        "--workload",
        "text_200,image_448",
        "--batch-sizes",
        settings["bare_batches"],
    ]
    options += ["--modes", "bare", "--seconds", "4" if device.startswith("cpu") else "5"]
    options += ["--deadline-s", str(max(remaining - 20, 30))] + (["--compile"] if compile else [])
    code, result = in_subprocess(model, out, options, timeout=max(remaining - 10, 30))
    if code is None:
        log("bare-model timing ran out of time")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    timeline = Timeline(args.budget_s)
    device = resolve_device(args.device)
    accel = not device.startswith("cpu")
    settings = settings_for(args, accel)
    tag = host_tag(device)
    experiment = Experiment("perf.accel", argv, args.out / tag / datetime.date.today().isoformat(), host=tag)
    run_dir = experiment.out
    for sub in ("csv", "raw"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    log(f"perf-accel: size {args.size} on {device}; results in {run_dir}")
    device_name = accelerator_name(device) if accel else cpu_name()
    record: dict = {"size": args.size, "device": device, "device_name": device_name, "settings": settings}

    model = checkpoint(args.size, device)
    timeline.mark("checkpoint ready")
    data = {"text_200": generate("text_200", rows=args.requests), "image_448": generate("image_448")}
    repository = serving_repository(
        run_dir / "raw" / f"repo-accel-{args.size}",
        settings["max_rows"],
        settings["token_budget"],
        settings["preprocess_instances"],
        args.model_instances,
    )
    server_log = run_dir / "raw" / f"server-accel-{args.size}.log"
    server_log.unlink(missing_ok=True)  # the server appends; the report quotes this run's lines only
    endpoint = start_server(
        f"{args.size}-{device.split(':')[0]}",
        model,
        server_log,
        repository=repository,
        env={"DEVICE": device, "COMPILE": args.serve_compile},
    )
    timeline.mark("server ready")
    record["compile_log"] = compile_lines(Path(endpoint.log_path))
    try:
        record["points"] = measure_served(endpoint, args.size, settings, data, run_dir, timeline)
    finally:
        endpoint.stop()
    timeline.mark("server stopped")

    remaining = timeline.remaining()
    if remaining > 60:
        out = run_dir / "raw" / f"accel-{args.size}-bare.json"
        bare = time_bare_model(model, device, settings, args.compile, out, remaining)
        if bare is not None:
            record["bare"] = bare
    timeline.mark("bare model timed")
    record = experiment.report(**record, timeline=timeline.steps)
    experiment.write_json(f"accel-{args.size}.json", record)
    path = write_report(run_dir / f"accel-{args.size}.md", record)
    log(f"report: {path}")
    return 0 if record["points"] else 1


def compile_lines(log_path: Path) -> list[str]:
    """What the model step said about torch.compile while loading (backend.runtime.backbone /
    backend.runtime.compiled)."""
    if not log_path.exists():
        return []
    keys = ("compiled in", "torch.compile failed", "more graph(s)", "running eager")
    return [
        line.split("] ", 1)[-1].strip()
        for line in log_path.read_text(errors="replace").splitlines()
        if "_model]" in line and any(key in line for key in keys)
    ]


def _point(record: dict, workload: str) -> Point:
    """The record's point for `workload` (a failed empty one when it was not measured)."""
    found = record["points"].get(workload)
    return Point.from_dict(found) if found else Point("", workload, "", 0)


def write_report(path: Path, record: dict) -> Path:
    settings = record["settings"]
    text, image = (_point(record, workload) for workload in ("text_200", "image_448"))
    bare = record.get("bare", {})
    text_bare = bare.get("workloads", {}).get("text_200", {})
    best_mode, best_rate, best_batch = None, 0.0, None
    for mode, rates in text_bare.get("modes", {}).items():
        for batch, rate in rates.items():
            if rate > best_rate:
                best_mode, best_rate, best_batch = mode, rate, batch
    ratio = text.throughput / best_rate if best_rate and text.ok else None
    lines = [
        f"# perf-accel: {record['size']} architecture (random weights) on {record['device_name']} "
        f"({record['device']}), {record['started'][:10]}",
        "",
        f"Served through `model_repository/` (model step: up to {settings['max_rows']} rows per execute and "
        f"per micro-batch, token budget {settings['token_budget']}; {settings['preprocess_instances']} "
        f"preprocess instances, {settings.get('model_instances', 1)} model step instance(s)), "
        f"perf_analyzer over HTTP at concurrency {settings['concurrency']}, after a "
        f"warm-up in 2 s time windows; model step `compile: "
        f"{settings.get('serve_compile', 'auto')}`"
        + (" (" + "; ".join(record["compile_log"]) + ")" if record.get("compile_log") else "")
        + f". Command: `{record.get('command', 'python -m perf.accel')}`. Timeline (s since start): "
        + ", ".join(f"{step} {seconds}" for step, seconds in record["timeline"].items())
        + ".",
        "",
    ]
    rows = []
    for name, point in (("text_200", text), ("image_448", image)):
        if point.ok:
            # tokens per row x rows per second (custom.seconds also counts a retried perf_analyzer run)
            custom, step = point.custom, point.model_step
            tokens = (custom.tokens_per_row or 0) * point.throughput
            requests = settings["requests"] if name == "text_200" else settings["image_requests"]
            rows.append(
                [
                    f"{name} through Triton ({requests} requests)",
                    f"{fmt(point.throughput)} req/s; p50 {fmt(point.p50_ms)} ms, "
                    f"p99 {fmt(point.p99_ms)} ms; {fmt(step.rows_per_execute)} rows per execute; "
                    f"model compute {fmt(step.compute_ms)} ms per execute, queue {fmt(step.queue_ms)} ms; "
                    f"~{fmt(tokens, 0)} tokens/s; "
                    f"{fmt(custom.compiled_micro_batches, 0)} of "
                    f"{fmt(custom.micro_batches, 0)} micro-batches compiled, "
                    f"{fmt(custom.recompiles, 0)} recompiles",
                ]
            )
    for workload, section in bare.get("workloads", {}).items():
        for mode, rates in section.get("modes", {}).items():
            rows.append(
                [
                    f"bare model, {workload}, {mode}",
                    ", ".join(f"batch {b}: {fmt(r)} rows/s" for b, r in rates.items()),
                ]
            )
        if section.get("compile_seconds"):
            rows.append([f"torch.compile time, {workload}", f"{fmt(section['compile_seconds'])} s"])
        if section.get("error"):
            rows.append([f"bare model, {workload}", f"failed: {section['error']}"])
        if section.get("compile_error"):
            rows.append([f"torch.compile, {workload}", section["compile_error"]])
    if ratio is not None:
        rows.append(
            [
                "**serving ÷ best bare (text_200)**",
                f"**{ratio:.2f}** ({fmt(text.throughput)} ÷ {fmt(best_rate)} rows/s, {best_mode} batch "
                f"{best_batch}); target ≥ {ACCEL_TARGET} for 8B on one H100",
            ]
        )
    rows.append(
        [
            "vLLM-Ascend tutorial (Qwen3-VL-Embedding-8B, `vllm bench serve --random-input 200`)",
            f"{TUTORIAL['req_per_s']} req/s, {TUTORIAL['tok_per_s']:,} tok/s, "
            f"mean E2EL {TUTORIAL['mean_e2el_ms']:,} ms over {TUTORIAL['requests']} requests",
        ]
    )
    lines += table(["measurement", "result"], rows)
    lines.append("")
    path.write_text("\n".join(lines))
    return path


if __name__ == "__main__":
    sys.exit(main())
