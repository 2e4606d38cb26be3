"""A/B of two commits on one machine: the same perf_analyzer points against REF's server and the working
tree's, alternately, and the throughput ratio working tree ÷ REF with its spread.

Benchmarks elsewhere compare ratios within one commit, so a slowdown that lands with a change goes unnoticed
(issue 22: the same load against ed6213f and a later main gave 161.6 vs 145.8 and 171.6 vs 100.9 infer/s).
Here both trees run in one session with the same tritonserver, checkpoint, data, ports and perf_analyzer
options; only the project's code differs (backend/, model_repository/, the Python the stubs import). Each
tree is served as its own `make serve` would on this host: with the model steps' instance count that its
tools/repository.py chooses (two on a CPU-only host), or, for a tree from before that choice, its repository
as it is (one).

REF is exported (``git archive``, no entry in the repository's worktree list) into
``build/perf-ab/<sha12>/`` and given a venv of its own: a hard-linked copy of this checkout's ``.venv`` with
REF installed editable in place of the working tree (the stubs import ``backend`` through the venv's
python3 on PATH), and a hard-linked ``models/``. Built once per commit, reused after.

Each alternation starts REF's server, measures every point, stops it, then does the same for the working
tree on the same ports (the order flips every alternation, so a drift of the machine's load counts against
both alike). Each point: perf_analyzer over HTTP, three time windows of ``--window-ms`` after a short warm-up
run. The ratio of an alternation is working ÷ REF of that alternation's two runs; the report gives their
median and min–max, and each side's median rate; the same for the server's CPU milliseconds per request
(tritonserver and its stubs), the cost itself rather than the rate (contention raises it too).

    python -m perf.ab REF [--workloads text_200] [--concurrency 16] [--alternations 3] [--window-ms 5000]
    make perf-ab REF=ed6213f

Writes ``ab-<ref>.json`` / ``ab-<ref>.md`` into ``perf/results/<host>/<date>/`` (``--out``), with the
command, commit, host and load around the run (``perf.lib.record.Experiment``); perf_analyzer and server logs
under its ``raw/ab-<ref>/``. On shared cores the spread is the figure to read first: a drop smaller than it is
noise.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from perf.lib.console import add_out_argument, command_parser, log, parse_list, table
from perf.lib.paths import REPO
from perf.lib.perf_analyzer import Measurement, read_csv_row, run_perf_analyzer
from perf.lib.pipelines import model_path
from perf.lib.record import Experiment, load_1m
from perf.lib.sampling import group_cpu_seconds, ratio_spread
from perf.lib.server_stats import finished_requests
from perf.lib.servers import start_server
from perf.lib.workloads import WORKLOADS, generate

BUILD_DIR = REPO / "build" / "perf-ab"
READY_MARK = ".perf-ab-ready"
PROJECT_DIST = "qwen3_vl_triton"  # the project's distribution name in site-packages
PROJECT_SCRIPTS = ("qwen3vl",)  # console scripts the project installs into the venv's bin/
DEFAULT_WORKLOADS = "text_200"
DEFAULT_CONCURRENCY = "16"
DEFAULT_ALTERNATIONS = 3
DEFAULT_WINDOW_MS = 5000
WORK, REF = "work", "ref"


@dataclass
class Side:
    """One of the two trees: its root, model repository and the venv whose python3 the stubs run."""

    label: str
    commit: str
    root: Path
    venv: Path

    @property
    def repository(self) -> Path:
        return self.root / "model_repository"

    @property
    def model_instances(self) -> int | None:
        """Served as that tree's `make serve` serves it: the model steps' instances chosen for this host
        (0, auto: tools/repository.py) where the tree has that choice, else its repository as it is."""
        return 0 if (self.root / "tools" / "repository.py").exists() else None


@dataclass
class Run:
    """One perf_analyzer point against one side in one alternation."""

    side: str
    alternation: int
    workload: str
    concurrency: int
    throughput: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    cpu_ms_per_request: float = 0.0  # tritonserver + stubs, over every window of the run
    mode: str = ""
    load1: float = 0.0
    error: str = ""


@dataclass
class PointResult:
    workload: str
    concurrency: int
    ref: list[float] = field(default_factory=list)
    work: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    ratio_median: float | None = None
    ratio_min: float | None = None
    ratio_max: float | None = None
    ref_cpu_ms: list[float] = field(default_factory=list)
    work_cpu_ms: list[float] = field(default_factory=list)
    cpu_ratios: list[float] = field(default_factory=list)
    cpu_ratio_median: float | None = None
    cpu_ratio_min: float | None = None
    cpu_ratio_max: float | None = None


# ----------------------------------------------------------------------------------------------------------
# The pure parts: order, ratios, arguments
# ----------------------------------------------------------------------------------------------------------


def alternation_order(index: int) -> tuple[str, str]:
    """REF first in even alternations, the working tree first in odd ones (ABBA: a steady drift of the
    machine's load favours neither side)."""
    return (REF, WORK) if index % 2 == 0 else (WORK, REF)


def point_results(runs: Sequence[Run]) -> list[PointResult]:
    """The runs grouped by point (in the order first measured), each side's rates by alternation."""
    points: dict[tuple[str, int], PointResult] = {}
    for run in runs:
        key = (run.workload, run.concurrency)
        points.setdefault(key, PointResult(run.workload, run.concurrency))
    for point in points.values():
        by_side: dict[str, dict[int, Run]] = {REF: {}, WORK: {}}
        for run in runs:
            if (run.workload, run.concurrency) == (point.workload, point.concurrency):
                by_side[run.side][run.alternation] = run
        alternations = sorted(set(by_side[REF]) & set(by_side[WORK]))
        point.ref = [by_side[REF][a].throughput for a in alternations]
        point.work = [by_side[WORK][a].throughput for a in alternations]
        spread = ratio_spread(point.ref, point.work)
        point.ratios = spread["ratios"]
        point.ratio_median = spread["ratio_median"]
        point.ratio_min = spread["ratio_min"]
        point.ratio_max = spread["ratio_max"]
        # CPU per request: the cost itself rather than the rate, though contention raises it too (on 2
        # shared cores one commit's moved 9.6 -> 38.7 ms). Ratio working ÷ REF: below 1 is cheaper.
        point.ref_cpu_ms = [by_side[REF][a].cpu_ms_per_request for a in alternations]
        point.work_cpu_ms = [by_side[WORK][a].cpu_ms_per_request for a in alternations]
        cpu = ratio_spread(point.ref_cpu_ms, point.work_cpu_ms)
        point.cpu_ratios = cpu["ratios"]
        point.cpu_ratio_median = cpu["ratio_median"]
        point.cpu_ratio_min = cpu["ratio_min"]
        point.cpu_ratio_max = cpu["ratio_max"]
    return list(points.values())


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("perf.ab", __doc__)
    parser.add_argument(
        "ref", help="the commit to compare the working tree with (anything git rev-parse takes)"
    )
    parser.add_argument(
        "--workloads", default=DEFAULT_WORKLOADS, help=f"comma list (default {DEFAULT_WORKLOADS})"
    )
    parser.add_argument(
        "--concurrency", default=DEFAULT_CONCURRENCY, help=f"comma list (default {DEFAULT_CONCURRENCY})"
    )
    parser.add_argument("--alternations", type=int, default=DEFAULT_ALTERNATIONS, help="(default 3)")
    parser.add_argument(
        "--window-ms",
        type=int,
        default=DEFAULT_WINDOW_MS,
        help="perf_analyzer's window; 3 per point (default 5000)",
    )
    parser.add_argument(
        "--model", default="tiny", help="tiny, bench or a checkpoint directory (default tiny)"
    )
    parser.add_argument("--rebuild", action="store_true", help="build REF's tree and venv again")
    add_out_argument(parser)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.workloads = parse_list(args.workloads)
    args.concurrency = parse_list(args.concurrency, int)
    unknown = [name for name in args.workloads if name not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(WORKLOADS)}")
    if not args.workloads or not args.concurrency or min(args.concurrency) < 1:
        parser.error("--workloads and --concurrency need at least one value, concurrencies ≥ 1")
    if args.alternations < 1 or args.window_ms < 500:
        parser.error("--alternations must be ≥ 1 and --window-ms ≥ 500")
    return args


# ----------------------------------------------------------------------------------------------------------
# REF's tree and venv
# ----------------------------------------------------------------------------------------------------------


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()


def resolve_commit(ref: str) -> str:
    try:
        return git("rev-parse", "--verify", f"{ref}^{{commit}}")
    except subprocess.CalledProcessError as error:
        raise SystemExit(f"perf.ab: {ref!r} is not a commit here: {error.stderr.strip()}") from error


def working_tree_label() -> str:
    """The working tree's commit, marked when it has uncommitted changes (those are measured too)."""
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short=12", "HEAD") + (" + uncommitted changes" if dirty else "")


def _site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if not found:
        raise SystemExit(f"perf.ab: no site-packages in {venv}")
    return found[0]


def _unlink_project_install(venv: Path) -> None:
    """Remove the working tree's editable install from a hard-linked venv copy: unlinking drops only the
    copy's names, so the original venv keeps its files."""
    site = _site_packages(venv)
    for path in [*site.glob(f"__editable__*{PROJECT_DIST}*"), *site.glob(f"{PROJECT_DIST}-*.dist-info")]:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    for name in PROJECT_SCRIPTS:
        (venv / "bin" / name).unlink(missing_ok=True)


def build_ref(commit: str, rebuild: bool = False) -> Path:
    """REF's tree with its own venv under build/perf-ab/<sha12>/ (reused once built)."""
    tree = BUILD_DIR / commit[:12]
    if (tree / READY_MARK).exists() and not rebuild:
        log(f"REF {commit[:12]}: reusing {tree.relative_to(REPO)}")
        return tree
    if tree.exists():
        shutil.rmtree(tree)  # hard links: removes the copy's names only
    tree.mkdir(parents=True)
    started = time.monotonic()
    log(f"REF {commit[:12]}: exporting into {tree.relative_to(REPO)} ...")
    archive = subprocess.Popen(["git", "archive", commit], cwd=REPO, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(tree)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise SystemExit(f"perf.ab: git archive {commit} failed")
    venv = tree / ".venv"
    # A hard-linked copy: seconds and no disk; the project's own install is then replaced by REF's.
    subprocess.run(["cp", "-al", sys.prefix, str(venv)], check=True)
    _unlink_project_install(venv)
    log(f"REF {commit[:12]}: installing it editable into its venv ...")
    subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-build-isolation",
            "-e",
            str(tree),
        ],
        check=True,
        cwd=tree,
    )
    models = REPO / "models"
    if models.is_dir() and not (tree / "models").exists():
        subprocess.run(["cp", "-al", str(models), str(tree / "models")], check=True)
    (tree / READY_MARK).write_text(commit + "\n")
    log(f"REF {commit[:12]}: built in {time.monotonic() - started:.0f} s")
    return tree


def check_imports_ref(venv: Path, tree: Path) -> str:
    """Where the REF venv's python imports `backend` from (must be REF's tree)."""
    done = subprocess.run(
        [str(venv / "bin" / "python3"), "-c", "import backend, os; print(os.path.dirname(backend.__file__))"],
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    )
    where = Path(done.stdout.strip())  # from cwd=/: no checkout on sys.path but the venv's
    if tree.resolve() not in where.resolve().parents:
        raise SystemExit(f"perf.ab: REF's venv imports backend from {where}, not from {tree}")
    return str(where)


# ----------------------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------------------


def measure_side(
    side: Side,
    alternation: int,
    points: Sequence[tuple[str, int]],
    data: dict[str, Path],
    args: argparse.Namespace,
    ports: Sequence[int],
    raw: Path,
) -> list[Run]:
    ensembles = sorted({WORKLOADS[name].model for name, _ in points})
    env = {}
    if any(WORKLOADS[name].model != WORKLOADS["text_200"].model for name, _ in points):
        env["RERANKER_MODEL_PATH"] = str(model_path(args.model, "reranker"))
    tag = f"{side.label}-a{alternation}"
    # The stubs inherit the server's working directory and put it on sys.path ahead of the venv's editable
    # finder: started from this checkout, REF's stubs would import this checkout's `backend` package.
    with contextlib.chdir(side.root):
        endpoint = start_server(
            f"{side.label} ({side.commit})",
            model_path(args.model),
            raw / f"server-{tag}.log",
            repository=side.repository,
            env=env,
            ensembles=ensembles,
            venv=side.venv,
            ports=ports,
            model_instances=side.model_instances,
        )
    pgid = getattr(endpoint.server, "pid", 0)  # tritonserver leads its own session: its group's CPU
    runs = []
    try:
        warmed: set[str] = set()
        for workload, concurrency in points:
            name = f"{tag}-{workload}-c{concurrency}"
            ensemble = WORKLOADS[workload].model
            if workload not in warmed:
                # The first requests after a start pay for lazy initialisation; not part of the figure.
                warm = Measurement(mode="count", request_count=max(4 * concurrency, 32), timeout_s=120.0)
                run_perf_analyzer(
                    endpoint, "http", data[workload], concurrency, warm, raw / f"{name}-warmup.csv",
                    raw / f"{name}-warmup.log", ensemble=ensemble,
                )  # fmt: skip
                warmed.add(workload)
            # Stability 100 %: the first three windows settle it, so every point lasts 3 windows.
            # A hung --request-count fallback (perf_analyzer 2.50, README) is cut after 2 minutes, not 5.
            measurement = Measurement(
                mode="auto", interval_ms=args.window_ms, stability=100, max_trials=3, timeout_s=120.0
            )
            csv_path = raw / f"{name}.csv"
            cpu_before, done_before = group_cpu_seconds(pgid), finished_requests(endpoint, ensemble)
            mode, error = run_perf_analyzer(
                endpoint, "http", data[workload], concurrency, measurement, csv_path, raw / f"{name}.log",
                ensemble=ensemble,
            )  # fmt: skip
            cpu, done = (
                group_cpu_seconds(pgid) - cpu_before,
                finished_requests(endpoint, ensemble) - done_before,
            )
            run = Run(side.label, alternation, workload, concurrency, mode=mode, load1=load_1m(), error=error)
            run.cpu_ms_per_request = round(1000.0 * cpu / done, 2) if done else 0.0
            if not error:
                _, row = read_csv_row(csv_path)
                run.throughput = round(float(row["Inferences/Second"]), 2)
                run.p50_ms = round(float(row["p50 latency"]) / 1000.0, 2)
                run.p99_ms = round(float(row["p99 latency"]) / 1000.0, 2)
            log(
                f"  alternation {alternation + 1}/{args.alternations} {side.label:4s} "
                f"{workload} c={concurrency}: "
                + (
                    f"{run.throughput:.1f} infer/s, p50 {run.p50_ms:.0f} ms"
                    if not error
                    else f"FAILED {error}"
                )
                + f", {run.cpu_ms_per_request:.1f} CPU ms/request (load {run.load1})"
            )
            runs.append(run)
    finally:
        endpoint.stop()
    return runs


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown(experiment: Experiment, report: dict, points: Sequence[PointResult]) -> list[str]:
    lines = experiment.heading(f"A/B: working tree vs {report['ref_commit'][:12]}", report)
    lines += [
        f"REF {report['ref']} = {report['ref_commit'][:12]} (server code from `{report['ref_backend']}`); "
        f"working tree {report['work_commit']}. {report['alternations']} alternations, REF and working tree "
        f"on the same ports ({report['ports'][0]}), model `{report['model']}`, perf_analyzer over HTTP, "
        f"3 windows of {report['window_ms']} ms per point after a warm-up. Ratio = working ÷ REF per "
        "alternation; load averages of each run in the JSON.",
        "",
    ]
    rows = [
        (
            p.workload,
            p.concurrency,
            _fmt(statistics.median(p.ref) if p.ref else None, 1),
            _fmt(statistics.median(p.work) if p.work else None, 1),
            f"**{_fmt(p.ratio_median)}**",
            f"{_fmt(p.ratio_min)}–{_fmt(p.ratio_max)}",
            ", ".join(f"{x:.3f}" for x in p.ratios),
        )
        for p in points
    ]
    header = ("workload", "c", "REF infer/s (median)", "working infer/s (median)", "ratio median", "min–max")
    lines += table((*header, "per alternation"), rows)
    cpu_rows = [
        (
            p.workload,
            p.concurrency,
            _fmt(statistics.median(p.ref_cpu_ms) if p.ref_cpu_ms else None, 2),
            _fmt(statistics.median(p.work_cpu_ms) if p.work_cpu_ms else None, 2),
            f"**{_fmt(p.cpu_ratio_median)}**",
            f"{_fmt(p.cpu_ratio_min)}–{_fmt(p.cpu_ratio_max)}",
        )
        for p in points
    ]
    lines += [
        "",
        "Server CPU (tritonserver and its stubs) per request answered, over all of a run's windows. Ratio "
        "working ÷ REF, below 1 = cheaper. Contention raises it too (smaller batches, more switches).",
        "",
        *table(
            ("workload", "c", "REF CPU ms/request", "working CPU ms/request", "ratio median", "min–max"),
            cpu_rows,
        ),
    ]
    failed = [r for r in report["runs"] if r["error"]]
    if failed:
        lines += [
            "",
            f"{len(failed)} run(s) failed: "
            + "; ".join(f"{r['side']} a{r['alternation']}: {r['error']}" for r in failed),
        ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from tools.ports import free_ports

    commit = resolve_commit(args.ref)
    experiment = Experiment("perf.ab", argv, args.out)
    short = commit[:12]
    raw = experiment.out / "raw" / f"ab-{short}"
    raw.mkdir(parents=True, exist_ok=True)
    tree = build_ref(commit, args.rebuild)
    ref_backend = check_imports_ref(tree / ".venv", tree)
    sides = {
        REF: Side(REF, short, tree, tree / ".venv"),
        WORK: Side(WORK, working_tree_label(), REPO, Path(sys.prefix)),
    }
    data = {name: generate(name) for name in args.workloads}
    points = [(name, c) for name in args.workloads for c in args.concurrency]
    ports = free_ports(3)
    log(
        f"A/B {short} vs the working tree: {len(points)} point(s) x {args.alternations} "
        f"alternation(s), ports {ports}"
    )
    runs: list[Run] = []
    for alternation in range(args.alternations):
        for label in alternation_order(alternation):
            runs += measure_side(sides[label], alternation, points, data, args, ports, raw)
    results = point_results(runs)
    report = experiment.report(
        ref=args.ref,
        ref_commit=commit,
        ref_backend=os.path.relpath(ref_backend, REPO),
        work_commit=sides[WORK].commit,
        model=args.model,
        alternations=args.alternations,
        window_ms=args.window_ms,
        ports=ports,
        points=[asdict(p) for p in results],
        runs=[asdict(r) for r in runs],
    )
    name = f"ab-{short}"
    if (experiment.out / f"{name}.json").exists():
        name += time.strftime("-%H%M%S")
    experiment.write_json(f"{name}.json", report)
    experiment.write_markdown(f"{name}.md", markdown(experiment, report, results), echo=True)
    log(f"wrote {experiment.out / name}.json / .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
