"""`make perf`: perf_analyzer sweeps of the embedding and reranker ensembles, comparisons, a Markdown summary.

    python -m perf.run [--models served|tiny|bench|PATH,...] [--workloads text_200,...]
                       [--concurrency 1,2,...] [--protocols http,grpc]
                       [--compare batching,efficiency,padding | none]
                       [--compare-models tiny,bench] [--quick] [--out perf/results] [--run-dir DIR]

Sweeps: for each model, workload, protocol and concurrency, one perf_analyzer measurement, bracketed by
snapshots of Triton's per-model statistics (the ensemble's composing models: queue / compute per step,
batch sizes executed) and of the metrics port (the qwen3vl_* families the Python models export). `served`
(the default) measures the server `make serve` runs on TRITON_HTTP_PORT if one is up, else starts one with
the default model; named models always get a server of their own, on free ports, loading only the
ensembles the chosen workloads target (rerank_200: the reranker, whose checkpoint for `tiny` / `bench` is
models/qwen3-vl-reranker-<name>, for a checkpoint directory RERANKER_MODEL_PATH).

Comparisons, each measured in this run, on servers of its own:
  batching    text_200 at --compare-concurrency (16) with the model step's dynamic batching on, then off
              (a copy of the repository whose config has no dynamic_batching block), for each compare model
  efficiency  text_200 end-to-end throughput through the ensemble on the bench model (best of concurrency
              8, 16 and 64) / the same backend code in-process with ideal batches (perf/lib/inprocess.py),
              with py-spy profiles of the stubs during the end-to-end run
  padding     padded / real tokens on text_mixed (from the sweep, else measured at concurrency 16), and
              text_mixed at concurrency 16 with batch_overhead_tokens set to each --padding-overheads value

Results: perf/results/<host-tag>/<date>/ with summary.md, PNG plots, csv/ (perf_analyzer's -f rows),
points.json (everything measured) and raw/ (logs, per-run CSVs, profiles; git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from perf.lib import profiling, summary
from perf.lib.console import command_parser, log, parse_list
from perf.lib.host import RESULTS, cpu_name, host_tag, new_run_dir, write_json
from perf.lib.inprocess import in_subprocess
from perf.lib.measure import measure as measure_point
from perf.lib.paths import MODEL_REPOSITORY
from perf.lib.perf_analyzer import Measurement, target_args, time_window_args
from perf.lib.pipelines import ENSEMBLE, MODEL_STEP, NAMED_MODELS, PREPROCESS, RERANKER
from perf.lib.pipelines import model_path as checkpoint_path
from perf.lib.points import Point
from perf.lib.record import Experiment
from perf.lib.servers import SERVER_OVERRIDES, Endpoint, running_server, start_server
from perf.lib.variants import read_config, variant_repository, with_parameter, without_dynamic_batching
from perf.lib.workloads import DEFAULT_OUT, WORKLOADS, generate

DEFAULT_CONCURRENCY = "1,2,4,8,16,32,64"
TARGETS = {"efficiency": 0.85, "batching_gain": 3.0, "padding": 1.15}


class Runner:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        # The measurement options are parsed straight into Measurement's fields (same names).
        self.measurement = Measurement(
            **{field.name: getattr(args, field.name) for field in fields(Measurement) if field.name in args}
        )
        if args.append and args.run_dir is None:
            raise SystemExit("--append needs --run-dir (the run to add to)")
        tag = args.host_tag or host_tag("cpu")
        self.run_dir = new_run_dir(tag, args.out, args.run_dir)
        self.experiment = Experiment("perf.run", None, self.run_dir, host=tag)
        self.data: dict[str, Path] = {}
        self.record: dict = {
            "started": self.experiment.header["started"],
            "command": self.experiment.command,
            "host": host_info(self.experiment),
            "measurement": vars(self.measurement),
            "points": [],
            "comparisons": {},
            "targets": TARGETS,
            "inprocess": {},
        }
        self.started = time.monotonic()
        previous = self.run_dir / "points.json"
        if args.append and previous.exists():
            # Another part of the same run (e.g. a second model with fewer workloads): keep what is there.
            earlier = json.loads(previous.read_text())
            earlier["command"] = f"{earlier['command']} ; {self.record['command']}"
            earlier["host"]["busy_before"] = earlier["host"].get("busy_before", []) + [
                f"(part {earlier.get('parts', 1) + 1}) {busy}" for busy in self.record["host"]["busy_before"]
            ]
            earlier["parts"] = earlier.get("parts", 1) + 1
            self.started -= earlier.get("elapsed_s", 0.0)
            self.record = {**self.record, **{k: v for k, v in earlier.items() if k not in ("measurement",)}}

    # -------------------------------------------------------------------------------------------------
    def workload_data(self, name: str) -> Path:
        if name not in self.data:
            rows = dict(self.args.rows).get(name)
            self.data[name] = generate(name, self.args.data_dir, rows=rows)
        return self.data[name]

    def save(self) -> None:
        self.record["elapsed_s"] = round(time.monotonic() - self.started, 1)
        write_json(self.run_dir / "points.json", self.record)

    def add(self, point: Point, index: str = "") -> Point:
        self.record["points"].append(point.as_dict())
        where = f"{point.model} {point.workload} {point.protocol} c={point.concurrency}"
        log(f"  {index}{where}: {point.describe()}")
        self.save()
        return point

    def endpoint(
        self,
        model: str,
        label: str | None = None,
        repository: Path | None = None,
        ensembles: Sequence[str] = (ENSEMBLE,),
    ) -> Endpoint:
        if model == "served":
            if self.args.url:
                return Endpoint(
                    label="served",
                    http=self.args.url,
                    grpc=self.args.grpc_url or self.args.url,
                    metrics_url=self.args.metrics_url or "",
                    model_path=os.environ.get("MODEL_PATH", "(running server)"),
                )
            running = running_server()
            if running is not None:
                log(f"measuring the running server at {running.http}")
                return running
            model = os.environ.get("MODEL_PATH") or "tiny"
        path = checkpoint_path(model)
        label = label or (model if model in NAMED_MODELS else path.name)
        env = {k: os.environ[k] for k in ("DEVICE", "DTYPE") if os.environ.get(k)}
        if RERANKER.ensemble in ensembles:
            env["RERANKER_MODEL_PATH"] = str(checkpoint_path(model, kind="reranker"))
        log(f"starting a server for {label} ({path}; {', '.join(ensembles)}) ...")
        return start_server(
            label,
            path,
            self.run_dir / "raw" / f"server-{label}.log",
            repository=repository or MODEL_REPOSITORY,
            env=env,
            ensembles=ensembles,
        )

    # -------------------------------------------------------------------------------------------------
    def sweep(self) -> None:
        plan = [
            (workload, protocol, concurrency)
            for workload in self.args.workloads
            for protocol in self.args.protocols
            for concurrency in self.args.concurrency
        ]
        # Only the ensembles the chosen workloads send to are loaded (in the order first needed).
        ensembles = list(dict.fromkeys(WORKLOADS[workload].model for workload in self.args.workloads))
        for model in self.args.models:
            endpoint = self.endpoint(model, ensembles=ensembles)
            try:
                self.record.setdefault("models", {})[endpoint.label] = endpoint.model_path
                for workload in self.args.workloads:
                    self.workload_data(workload)
                    for protocol in self.args.protocols:
                        line = plain_command(
                            endpoint, workload, self.data[workload], protocol, self.measurement
                        )
                        log(f"  {workload} without this runner: {line}")
                log(f"sweep on {endpoint.label}: {len(plan)} points")
                previous: dict[tuple[str, str], float] = {}
                for number, (workload, protocol, concurrency) in enumerate(plan, 1):
                    point = measure_point(
                        endpoint,
                        workload,
                        self.data[workload],
                        protocol,
                        concurrency,
                        self.measurement,
                        self.run_dir,
                        "sweep",
                        previous.get((workload, protocol), 0.0),
                        WORKLOADS[workload].model,
                    )
                    previous[(workload, protocol)] = point.throughput
                    self.add(point, f"[{number:3d}/{len(plan)}] ")
            finally:
                endpoint.stop()

    # -------------------------------------------------------------------------------------------------
    def compare(self) -> None:
        wanted = set(self.args.compare)
        if not wanted:
            return
        concurrency = self.args.compare_concurrency
        data = self.workload_data("text_200")
        results = self.record["comparisons"]
        for model in self.args.compare_models:
            label = f"{model}"
            batching = results.setdefault("batching", {})
            efficiency_model = "efficiency" in wanted and model == self.args.efficiency_model
            needs_padding = (
                "padding" in wanted
                and model == self.args.compare_models[-1]
                and not any(
                    p["workload"] == "text_mixed" and p["ok"]
                    for p in self.record["points"]
                    if p["tag"] == "sweep"
                )
            )
            if "batching" in wanted or efficiency_model or needs_padding:
                log(f"comparisons on {label}: dynamic batching on")
                endpoint = self.endpoint(model, label=f"{label}")
                try:
                    on = self.add(self.measure(endpoint, "text_200", data, concurrency, "batching-on"))
                    batching.setdefault(label, {})["on"] = on.as_dict()
                    if efficiency_model:
                        results["efficiency_e2e"] = [on.as_dict()]
                        for extra in self.args.efficiency_concurrency:
                            if extra == concurrency:
                                continue
                            profiled = self.profiled_measure(endpoint, "text_200", data, extra, "efficiency")
                            results["efficiency_e2e"].append(self.add(profiled).as_dict())
                    if needs_padding:
                        mixed = self.workload_data("text_mixed")
                        results["padding"] = self.add(
                            self.measure(endpoint, "text_mixed", mixed, concurrency, "padding")
                        ).as_dict()
                finally:
                    endpoint.stop()
            if "batching" in wanted:
                log(f"comparisons on {label}: dynamic batching off")
                repository = variant_repository(
                    self.run_dir / "raw" / "repo-batching-off",
                    {MODEL_STEP: without_dynamic_batching},
                )
                endpoint = self.endpoint(model, label=f"{label}-nobatch", repository=repository)
                try:
                    off = self.add(
                        self.profiled_measure(endpoint, "text_200", data, concurrency, "batching-off")
                    )
                    batching[label]["off"] = off.as_dict()
                finally:
                    endpoint.stop()
                on_tput, off_tput = batching[label]["on"]["throughput"], off.throughput
                batching[label]["gain"] = on_tput / off_tput if off_tput else None
                log(f"  batching gain on {label} at c={concurrency}: {batching[label]['gain'] or 0:.2f}x")
            if efficiency_model:
                self.inprocess(model)
            self.save()
        if "padding" in wanted and self.args.padding_overheads:
            self.padding_overheads(self.args.compare_models[0], concurrency)

    def padding_overheads(self, model: str, concurrency: int) -> None:
        """text_mixed with the planner's batch_overhead_tokens changed (a copy of the repository each):
        the knob that trades padding against the number of forward passes."""
        mixed = self.workload_data("text_mixed")
        results = self.record["comparisons"].setdefault("padding_overhead", {})
        for overhead in self.args.padding_overheads:
            edit = with_parameter("batch_overhead_tokens", str(overhead))
            repository = variant_repository(
                self.run_dir / "raw" / f"repo-overhead-{overhead}", {MODEL_STEP: edit}
            )
            log(f"comparisons on {model}: batch_overhead_tokens {overhead}")
            endpoint = self.endpoint(model, label=f"{model}-overhead{overhead}", repository=repository)
            try:
                point = self.add(self.measure(endpoint, "text_mixed", mixed, concurrency, "padding-overhead"))
                results[str(overhead)] = point.as_dict()
            finally:
                endpoint.stop()
        self.save()

    def measure(self, endpoint: Endpoint, workload: str, data: Path, concurrency: int, tag: str) -> Point:
        return measure_point(
            endpoint, workload, data, "http", concurrency, self.measurement, self.run_dir, tag
        )

    def profiled_measure(
        self, endpoint: Endpoint, workload: str, data: Path, concurrency: int, tag: str
    ) -> Point:
        server_pid = getattr(endpoint.server, "pid", None)
        if not self.args.profile or server_pid is None or profiling.available() is None:
            return self.measure(endpoint, workload, data, concurrency, tag)
        pids = {name: profiling.stub_pids(server_pid, name) for name in (MODEL_STEP, PREPROCESS)}
        name = f"{tag}-{endpoint.label}-c{concurrency}"
        with profiling.Profiler(
            [pid for group in pids.values() for pid in group], self.run_dir / "raw", name
        ) as prof:
            point = self.measure(endpoint, workload, data, concurrency, tag)
        by_pid = {entry["pid"]: entry for entry in prof.summaries()}
        point.profile = {
            model: profiling.merge([by_pid[pid] for pid in group if pid in by_pid])
            for model, group in pids.items()
            if any(pid in by_pid for pid in group)
        }
        return point

    def inprocess(self, model: str) -> None:
        log(f"in-process baseline on {model} (no server running) ...")
        batches = ",".join(str(b) for b in self.args.inprocess_batches)
        options = [
            "--workload",
            "text_200",
            "--batch-sizes",
            batches,
            "--seconds",
            str(self.args.inprocess_seconds),
        ]
        out = self.run_dir / "raw" / f"inprocess-{model}.json"
        code, result = in_subprocess(checkpoint_path(model), out, options, 1800, SERVER_OVERRIDES)
        if code == 0 and result is not None:
            self.record["inprocess"][model] = result
        else:
            self.record["inprocess"][model] = {"error": f"perf.lib.inprocess exited with {code}"}

    # -------------------------------------------------------------------------------------------------
    def finish(self) -> Path:
        ended = self.experiment.report()
        self.record["finished"] = ended["finished"]
        self.record["host"]["load_after"] = ended["load_after"]
        self.save()
        path = summary.write(self.run_dir, self.record)
        note = summary.cache_hits_note(Point.from_dict(point) for point in self.record["points"])
        if note:
            log(note)
        log(f"summary: {path}")
        return path


def plain_command(
    endpoint: Endpoint, workload: str, data: Path, protocol: str, measurement: Measurement
) -> str:
    """The perf_analyzer line that measures one workload like a sweep point, without this runner; C is the
    concurrency (perf/README.md lists one per workload)."""
    return (
        shlex.join(
            [
                "perf_analyzer",
                *target_args(WORKLOADS[workload].model, endpoint, protocol, data),
                *time_window_args(measurement),
            ]
        )
        + " --concurrency-range C:C"
    )


def served_batch_overhead_tokens() -> int:
    """The embedding model step's `batch_overhead_tokens` as configured in model_repository/."""
    from backend.settings import ModelSettings

    config = read_config(MODEL_REPOSITORY / MODEL_STEP / "config.pbtxt")
    value = config.parameters["batch_overhead_tokens"].string_value
    return int(value) if value else ModelSettings().batch_overhead_tokens


def host_info(experiment: Experiment) -> dict:
    """The machine facts `make perf` reports besides the scaffold's commit, load and busy processes."""
    import torch

    info = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "commit": experiment.header["commit"],
        "served_batch_overhead_tokens": served_batch_overhead_tokens(),
        "load_before": experiment.header["load_before"],
        "busy_before": experiment.header["busy_at_start"],
    }
    try:
        from importlib.metadata import version

        info["tritonclient"] = version("tritonclient")
        info["nvidia-pytriton"] = version("nvidia-pytriton")
    except Exception:
        pass
    return info


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = command_parser("perf.run", __doc__)
    parser.add_argument(
        "--models", default="served", help="served, tiny, bench or checkpoint dirs (comma list)"
    )
    parser.add_argument(
        "--url", default=None, help="HOST:PORT of a running server's HTTP endpoint (model 'served')"
    )
    parser.add_argument("--grpc-url", default=None, help="HOST:PORT of its gRPC endpoint")
    parser.add_argument("--metrics-url", default=None, help="its metrics page, http://HOST:PORT/metrics")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--concurrency", default=DEFAULT_CONCURRENCY)
    parser.add_argument("--protocols", default="http,grpc")
    parser.add_argument("--compare", default="batching,efficiency,padding", help="or 'none'")
    parser.add_argument("--compare-models", default="bench", help="models for the batching on/off comparison")
    parser.add_argument("--compare-concurrency", type=int, default=16)
    parser.add_argument("--efficiency-model", default="bench")
    parser.add_argument("--efficiency-concurrency", default="8,16,64")
    parser.add_argument(
        "--padding-overheads", default="256,64", help="batch_overhead_tokens values to compare"
    )
    parser.add_argument("--inprocess-batches", default="1,4,16,64")
    parser.add_argument("--inprocess-seconds", type=float, default=8.0)
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip py-spy profiles")
    default = Measurement()
    parser.add_argument(
        "--measurement", dest="mode", choices=("auto", "windows", "count"), default=default.mode
    )
    parser.add_argument("--interval-ms", type=int, default=default.interval_ms)
    parser.add_argument("--stability", type=int, default=default.stability)
    parser.add_argument("--max-trials", type=int, default=default.max_trials)
    parser.add_argument("--point-seconds", type=float, default=default.point_seconds)
    parser.add_argument("--point-timeout", dest="timeout_s", type=float, default=default.timeout_s)
    parser.add_argument("--rows", action="append", default=[], help="NAME=N: requests in a workload file")
    parser.add_argument(
        "--quick", action="store_true", help="short windows for smoke tests (-p 1000, -s 100, -r 6)"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=DEFAULT_OUT, help="where workload files are generated"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--host-tag", default=None)
    parser.add_argument("--append", action="store_true", help="add to the run in --run-dir, not a new one")
    args = parser.parse_args(argv)
    args.models = parse_list(args.models)
    args.workloads = parse_list(args.workloads)
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workloads {unknown}; choose from {list(WORKLOADS)}")
    args.concurrency = parse_list(args.concurrency, int)
    args.protocols = parse_list(args.protocols)
    args.compare = [] if args.compare == "none" else parse_list(args.compare)
    args.compare_models = parse_list(args.compare_models)
    args.efficiency_concurrency = parse_list(args.efficiency_concurrency, int)
    args.inprocess_batches = parse_list(args.inprocess_batches, int)
    args.padding_overheads = parse_list(args.padding_overheads, int)
    args.rows = [(name, int(count)) for name, _, count in (item.partition("=") for item in args.rows)]
    if args.quick:
        args.interval_ms, args.stability, args.max_trials = 1000, 100, 6
    return args


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    runner = Runner(args)
    log(f"results: {runner.run_dir}")
    busy = runner.record["host"]["busy_before"]
    if busy:
        log(f"note: other busy processes now: {'; '.join(busy)} (timings will be noisy)")
    try:
        runner.sweep()
        runner.compare()
    except KeyboardInterrupt:
        log("interrupted: writing the summary of what was measured")
    runner.finish()
    failed = [p for p in runner.record["points"] if not p["ok"]]
    return 1 if failed and len(failed) == len(runner.record["points"]) else 0


if __name__ == "__main__":
    sys.exit(main())
