"""Where the CPU of one served request goes, stage by stage:
``python -m perf.experiments.cpu_breakdown [--model tiny] [--workloads text_200,image_448]``.

The measure is CPU seconds of the whole tritonserver process tree (tritonserver and every Python stub, user +
system, from /proc/<pid>/task/*/stat) divided by the requests the ensemble finished: on a shared machine it
moves far less than a rate does. Each workload is measured `--rounds` times at `--concurrency` with
perf_analyzer (HTTP, a fixed request count) after a warm-up; then once more under py-spy
(``py-spy record --pid <tritonserver> --subprocesses --format raw --nonblocking``), whose samples of each
stub's Python threads split that stub's CPU into stages (a stage's CPU = the stub's CPU per request x the
stage's share of the stub's samples). tritonserver itself is C++ (HTTP front end, ensemble scheduling, the
Python backend's side of the shared-memory IPC): Triton's cost, one line, beside Triton's own timers
(/v2/models/stats: queue, compute input / infer / output per request of each step).

Approximations, said in the report too: py-spy sees Python threads, so a stub's native threads (torch's
intra-op pool) are counted in the stage that is running on its main thread when sampled, which is the
forward; a stub waiting inside a native call that spins (IPC) shows as "stub C++".

Writes ``cpu-breakdown.md`` / ``.json`` and one flame graph per workload
(``cpu-breakdown-<model>-<workload>.svg``) into ``--out`` (default today's results directory); raw
profiles and logs into ``<out>/raw/cpu-breakdown/``. Needs py-spy (requirements.txt puts it in the venv;
``--py-spy`` names another).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import re
import signal
import statistics
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from perf.lib import flamegraph
from perf.lib.console import add_out_argument, command_parser, log, parse_list, table
from perf.lib.paths import REPO
from perf.lib.perf_analyzer import Measurement, run_perf_analyzer
from perf.lib.pipelines import EMBEDDING, model_path
from perf.lib.profiling import available
from perf.lib.record import Experiment, load_1m
from perf.lib.sampling import TICKS, group_members
from perf.lib.server_stats import finished_requests, snapshot, stats_delta
from perf.lib.servers import Endpoint, start_server
from perf.lib.workloads import generate

SERVER = "tritonserver"
PREPROCESS, MODEL_STEP = EMBEDDING.preprocess, EMBEDDING.model_step
ROLES = (SERVER, PREPROCESS, MODEL_STEP)
RATE = 97  # py-spy samples per second (odd: no beat with periodic work)
DEFAULT_REQUESTS = {"text_200": 600, "image_448": 96}

# Stage -> substrings of a stack (frames `function (file:line)`, root first); the first stage that matches
# wins, so the stages nested deepest come first. One list per stub kind.
PREPROCESS_STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("read request tensors (IPC in)", ("read_inputs", "get_input_tensor_by_name", "as_numpy")),
    ("image decode / resize / patches", ("backend/media/", "PIL/")),
    ("tokenise (tokenizers)", ("backend/text/tokenization.py",)),
    ("chat prompt", ("backend/text/chat.py",)),
    ("parse and check items", ("backend/protocol.py", "EmbeddingPreprocessor.prepare ")),
    ("pack wire tensors", ("backend/wire.py",)),
    ("queue gate (backpressure)", ("backend/backpressure.py",)),
    ("metrics", ("backend/metrics.py",)),
    ("build responses (IPC out)", ("to_response", "InferenceResponse")),
)
MODEL_STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("read request tensors (IPC in)", ("read_inputs", "get_input_tensor_by_name", "as_numpy")),
    ("copy inputs (owned)", ("worker.py:owned", "owned (backend/runtime/worker.py")),
    ("unpack + checks", ("unpack_rows", "check_row", "BackboneRunner.unpack", "backend/wire.py")),
    ("collate", ("collate (backend/runtime/backbone.py",)),
    ("forward: attention mask (transformers)", ("masking_utils.py",)),
    ("forward: vision tower", ("Qwen3VLVisionModel", "get_image_features", "get_video_features")),
    ("forward: language model", ("modeling_qwen3_vl", "torch/nn/modules", "compiled.py")),
    ("pool, normalise, to numpy", ("row_outputs", "last_token_pool", "matryoshka")),
    ("respond (outputs, senders)", ("respond", "embedding_output", "to_response", "returned_responses")),
    ("metrics", ("backend/metrics.py",)),
    ("queue, plan, lanes (scheduler)", ("backend/runtime/scheduler.py", "backend/runtime/worker.py")),
)
STUB_NATIVE = "stub C++ (IPC, shared memory; no Python frame)"
_PROCESS_FRAME = re.compile(r'^process (\d+):"(.*)"$')


def role_of(cmdline: str) -> str:
    for role in (PREPROCESS, MODEL_STEP):
        if f"/{role}/" in cmdline:
            return role
    return SERVER


def thread_cpu(pgid: int) -> dict[str, float]:
    """CPU seconds so far by role, and by role's main thread vs its other threads (`<role>/main`,
    `<role>/threads`): for a model stub the other threads are torch's intra-op pool and the worker."""
    usage: dict[str, float] = collections.defaultdict(float)
    for proc, _ in group_members(pgid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            role = role_of(cmdline)
            for task in (proc / "task").iterdir():
                text = (task / "stat").read_text()
                fields = text[text.rindex(")") + 2 :].split()
                seconds = (int(fields[11]) + int(fields[12])) / TICKS
                usage[role] += seconds
                usage[f"{role}/{'main' if task.name == proc.name else 'threads'}"] += seconds
    return dict(usage)


def split_stack(stack: str) -> tuple[str, list[str]]:
    """(role, the stack's frames below the process frames) of one py-spy --subprocesses line."""
    frames = stack.split(";")
    role = SERVER
    while frames and (match := _PROCESS_FRAME.match(frames[0])):
        role = role_of(match.group(2))
        frames = frames[1:]
    return role, frames


def stage_of(role: str, frames: Sequence[str]) -> str:
    if not frames:
        return STUB_NATIVE
    stack = ";".join(frames)
    for stage, needles in PREPROCESS_STAGES if role == PREPROCESS else MODEL_STAGES:
        if any(needle in stack for needle in needles):
            return stage
    return "other Python"


def read_raw(path: Path) -> Iterable[tuple[str, int]]:
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield stack, int(count)


def stage_shares(path: Path) -> tuple[dict[str, dict[str, float]], list[tuple[str, int]]]:
    """Per stub role: stage -> share of that role's samples; and the stacks relabelled for the picture
    (root frame = the step's name, instances merged)."""
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    relabelled: list[tuple[str, int]] = []
    for stack, count in read_raw(path):
        role, frames = split_stack(stack)
        if role == SERVER:
            continue
        stage = stage_of(role, frames)
        counts[role][stage] += count
        relabelled.append((";".join([role, stage, *frames]), count))
    shares = {
        role: {stage: n / sum(counter.values()) for stage, n in counter.most_common()}
        for role, counter in counts.items()
    }
    return shares, relabelled


class SpyRecording:
    """`with SpyRecording(binary, pid, out):` py-spy records the server's stubs until the block ends."""

    def __init__(self, binary: str, pid: int, out: Path):
        self.command = [
            binary, "record", "--pid", str(pid), "--subprocesses", "--rate", str(RATE),
            "--format", "raw", "--nonblocking", "--output", str(out),
        ]  # fmt: skip
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> SpyRecording:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # attach to every stub before the load starts
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def measure_round(
    endpoint: Endpoint, pgid: int, data: Path, concurrency: int, requests: int, raw: Path, name: str
) -> dict[str, Any]:
    """One perf_analyzer run of `requests`: CPU ms per finished request by role (and thread kind), Triton's
    timers per step, the rate, the load."""
    ensemble = EMBEDDING.ensemble
    cpu_before, stats_before = thread_cpu(pgid), snapshot(endpoint)
    done_before = finished_requests(endpoint, ensemble)
    started = time.monotonic()
    _, error = run_perf_analyzer(
        endpoint, "http", data, concurrency, Measurement(mode="count", request_count=requests, timeout_s=300),
        raw / f"{name}.csv", raw / f"{name}.log",
    )  # fmt: skip
    seconds = time.monotonic() - started
    cpu_after, stats_after = thread_cpu(pgid), snapshot(endpoint)
    done = finished_requests(endpoint, ensemble) - done_before
    cpu_ms = {
        key: round(1000.0 * (cpu_after.get(key, 0.0) - cpu_before.get(key, 0.0)) / max(done, 1), 3)
        for key in sorted(cpu_after)
    }
    cpu_ms["total"] = round(sum(cpu_ms[role] for role in ROLES if role in cpu_ms), 3)
    stages = {}
    for model, stage in stats_delta(stats_before, stats_after).items():
        stages[model] = {
            "requests": stage.requests,
            "executions": stage.executions,
            "queue_ms": round(stage.queue_ms, 3),
            "compute_input_ms": round(stage.compute_input_ms, 3),
            "compute_infer_ms": round(stage.compute_infer_ms, 3),
            "compute_output_ms": round(stage.compute_output_ms, 3),
        }
    return {
        "requests": done,
        "seconds": round(seconds, 2),
        "rate": round(done / seconds, 2) if seconds else 0.0,
        "cpu_ms": cpu_ms,
        "triton": stages,
        "load1": load_1m(),
        "error": error,
    }


def median_cpu(rounds: Sequence[dict[str, Any]]) -> dict[str, float]:
    keys = sorted({key for entry in rounds for key in entry["cpu_ms"]})
    return {key: round(statistics.median(r["cpu_ms"].get(key, 0.0) for r in rounds), 3) for key in keys}


def breakdown_rows(
    cpu: dict[str, float], shares: dict[str, dict[str, float]]
) -> list[tuple[str, str, float]]:
    """(stage, whose cost, CPU ms per request), Triton's line first, then each stub's stages."""
    rows = [
        (
            "tritonserver: HTTP front end, ensemble scheduling, dynamic batcher, Python backend's side of "
            "the IPC (C++)",
            "Triton",
            cpu.get(SERVER, 0.0),
        )
    ]
    for role, step in ((PREPROCESS, "preprocess"), (MODEL_STEP, "model step")):
        for stage, share in shares.get(role, {}).items():
            whose = "ours"
            if stage == STUB_NATIVE:
                whose = "Triton (stub)"
            elif "forward" in stage:
                whose = "torch / transformers"
            rows.append((f"{step}: {stage}", whose, round(cpu.get(role, 0.0) * share, 3)))
    return rows


def run_workload(
    endpoint: Endpoint, pgid: int, workload: str, args: argparse.Namespace, raw: Path, out: Path
) -> dict[str, Any]:
    data = generate(workload)
    requests = args.requests or DEFAULT_REQUESTS.get(workload, 200)
    tag = f"{args.model}-{workload}-c{args.concurrency}"
    warm = Measurement(mode="count", request_count=max(4 * args.concurrency, 32), timeout_s=300)
    run_perf_analyzer(
        endpoint, "http", data, args.concurrency, warm, raw / f"{tag}-warm.csv", raw / f"{tag}-warm.log"
    )
    rounds = []
    for index in range(args.rounds):
        entry = measure_round(endpoint, pgid, data, args.concurrency, requests, raw, f"{tag}-r{index}")
        log(
            f"  {workload} round {index + 1}/{args.rounds}: {entry['rate']} req/s, "
            f"{entry['cpu_ms']['total']} CPU ms/request (load {entry['load1']})"
        )
        rounds.append(entry)
    result: dict[str, Any] = {"workload": workload, "requests": requests, "rounds": rounds}
    result["cpu_ms_median"] = cpu = median_cpu(rounds)
    if args.py_spy:
        profile = raw / f"{tag}.raw"
        with SpyRecording(args.py_spy, pgid, profile):  # pgid: the server leads its group
            profiled = measure_round(endpoint, pgid, data, args.concurrency, requests, raw, f"{tag}-spy")
        shares, stacks = stage_shares(profile)
        result["profiled_round"] = profiled
        result["stage_shares"] = shares
        result["breakdown"] = breakdown_rows(cpu, shares)
        picture = out / f"cpu-breakdown-{tag}.svg"
        picture.write_text(
            flamegraph.svg(
                stacks,
                f"{workload}, {args.model} model, concurrency {args.concurrency}: the Python stubs' samples "
                f"(py-spy, {RATE} Hz), first frame = step, second = stage",
            )
        )
        shown = picture.relative_to(REPO) if picture.is_relative_to(REPO) else picture
        result["flamegraph"] = str(shown)
        log(f"  {workload}: flame graph {picture}")
    return result


def markdown(experiment: Experiment, report: dict[str, Any]) -> list[str]:
    lines = experiment.heading("CPU per request, stage by stage", report)
    lines += [
        "CPU = user + system seconds of tritonserver and every stub (/proc) ÷ requests the ensemble "
        "finished; median of the rounds. A stub's stages split its CPU by py-spy's shares of its "
        "samples (one more round under py-spy); a stub's native threads (torch's intra-op pool) count "
        "in the stage its main thread runs, the forward.",
        "",
    ]
    for result in report["workloads"]:
        cpu = result["cpu_ms_median"]
        title = f"{result['workload']} ({report['model']} model, concurrency {report['concurrency']})"
        lines += [f"## {title}", ""]
        lines += table(
            ["round", "requests", "req/s", "CPU ms/request", "tritonserver", "preprocess", "model", "load"],
            [
                (
                    index + 1,
                    entry["requests"],
                    entry["rate"],
                    entry["cpu_ms"]["total"],
                    entry["cpu_ms"].get(SERVER, 0),
                    entry["cpu_ms"].get(PREPROCESS, 0),
                    entry["cpu_ms"].get(MODEL_STEP, 0),
                    entry["load1"],
                )  # fmt: skip
                for index, entry in enumerate(result["rounds"])
            ],
        )
        lines += [
            "",
            f"Threads: model step main {cpu.get(MODEL_STEP + '/main', 0)} ms, other threads "
            f"{cpu.get(MODEL_STEP + '/threads', 0)} ms; preprocess main {cpu.get(PREPROCESS + '/main', 0)} "
            f"ms, other threads {cpu.get(PREPROCESS + '/threads', 0)} ms; "
            f"tritonserver {cpu.get(SERVER, 0)} ms.",
            "",
        ]
        if "breakdown" in result:
            lines += table(
                ["stage", "whose", "CPU ms / request", "share"],
                [
                    (stage, whose, f"{ms:.2f}", f"{100.0 * ms / max(cpu['total'], 1e-9):.1f} %")
                    for stage, whose, ms in result["breakdown"]
                    if ms >= 0.005
                ],
            )
            lines += ["", f"Flame graph: `{result['flamegraph']}`.", ""]
        triton = result["rounds"][len(result["rounds"]) // 2]["triton"]
        lines += ["Triton's timers (one round, wall ms per request):", ""]
        lines += table(
            ["model", "requests", "executions", "queue", "compute input", "compute infer", "compute output"],
            [
                (
                    model,
                    stage["requests"],
                    stage["executions"],
                    stage["queue_ms"],
                    stage["compute_input_ms"],
                    stage["compute_infer_ms"],
                    stage["compute_output_ms"],
                )  # fmt: skip
                for model, stage in sorted(triton.items())
            ],
        )
        lines.append("")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("perf.experiments.cpu_breakdown", __doc__)
    add_out_argument(parser)
    parser.add_argument("--model", default="tiny", help="tiny | bench | a checkpoint directory")
    parser.add_argument("--workloads", default="text_200,image_448")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=0, help="per round (default: per workload)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--py-spy", default=None, help="py-spy binary (default the venv's, PATH)")
    parser.add_argument("--no-profile", action="store_true", help="CPU per request only, no py-spy round")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.py_spy = None if args.no_profile else (args.py_spy or available())
    if not args.no_profile and not args.py_spy:
        raise SystemExit("perf.experiments.cpu_breakdown: py-spy not found (--py-spy, or --no-profile)")
    experiment = Experiment("perf.experiments.cpu_breakdown", argv, args.out)
    raw = experiment.out / "raw" / "cpu-breakdown"
    raw.mkdir(parents=True, exist_ok=True)
    endpoint = start_server("cpu-breakdown", model_path(args.model), raw / f"server-{args.model}.log")
    pgid = getattr(endpoint.server, "pid", 0)  # tritonserver leads its own process group
    try:
        results = [
            run_workload(endpoint, pgid, workload, args, raw, experiment.out)
            for workload in parse_list(args.workloads)
        ]
    finally:
        endpoint.stop()
    report = experiment.report(model=args.model, concurrency=args.concurrency, workloads=results)
    experiment.write_json("cpu-breakdown.json", report)
    path = experiment.write_markdown("cpu-breakdown.md", markdown(experiment, report))
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
