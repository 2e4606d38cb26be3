"""What the perf scripts share: servers (started here or already running), perf_analyzer runs, the server's
statistics and metrics before/after a measurement, and where results go."""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from backend.settings import SERVER_ENV_VARIABLES

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "perf" / "results"
MODEL_REPOSITORY = REPO / "model_repository"


@dataclass(frozen=True)
class Pipeline:
    """One public ensemble and its two composing models (preprocess step, torch model step)."""

    ensemble: str
    preprocess: str
    model_step: str
    kind: str  # embedding | reranker (tools.checkpoint's kind)
    model_env: str  # the environment variable naming its checkpoint
    nudge_inputs: tuple[str, ...]  # the BYTES [1] inputs of a short row that flushes the stubs' metrics

    @property
    def models(self) -> tuple[str, str, str]:
        return (self.ensemble, self.preprocess, self.model_step)


EMBEDDING = Pipeline(
    "qwen3_vl_embedding",
    "qwen3_vl_embedding_preprocess",
    "qwen3_vl_embedding_model",
    "embedding",
    "MODEL_PATH",
    ("TEXT",),
)
RERANKER = Pipeline(
    "qwen3_vl_reranker",
    "qwen3_vl_reranker_preprocess",
    "qwen3_vl_reranker_model",
    "reranker",
    "RERANKER_MODEL_PATH",
    ("QUERY_TEXT", "DOCUMENT_TEXT"),
)
PIPELINES = {pipeline.ensemble: pipeline for pipeline in (EMBEDDING, RERANKER)}
ALL_MODELS = tuple(name for pipeline in PIPELINES.values() for name in pipeline.models)
ENSEMBLE, PREPROCESS, MODEL_STEP = EMBEDDING.models
EMBEDDING_MODELS = EMBEDDING.models
NAMED_MODELS = {
    "tiny": REPO / "models" / "qwen3-vl-embedding-tiny",
    "bench": REPO / "models" / "qwen3-vl-embedding-bench",
}
NAMED_RERANKERS = {
    "tiny": REPO / "models" / "qwen3-vl-reranker-tiny",
    "bench": REPO / "models" / "qwen3-vl-reranker-bench",
}
# Environment variables that change what a started server serves; cleared unless set on purpose.
SERVER_OVERRIDES = SERVER_ENV_VARIABLES


def pipeline_of(ensemble: str | dict | None) -> Pipeline:
    """The pipeline of an ensemble name, or of a point (dict; points written before `ensemble` existed
    measured the embedding ensemble)."""
    if isinstance(ensemble, dict):
        ensemble = ensemble.get("ensemble")
    return PIPELINES.get(ensemble or ENSEMBLE, EMBEDDING)


def log(message: str) -> None:
    """Progress goes to stderr, unbuffered, so `make perf` shows it while it runs."""
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------
# Models and result directories
# ----------------------------------------------------------------------------------------------------------


def model_path(name: str, kind: str = "embedding") -> Path:
    """`tiny` / `bench` (built on demand, as `make setup` builds tiny) or a checkpoint directory. For the
    reranker (`kind="reranker"`) a checkpoint directory comes from RERANKER_MODEL_PATH."""
    named = NAMED_RERANKERS if kind == "reranker" else NAMED_MODELS
    if name not in named:
        path = Path(os.environ.get("RERANKER_MODEL_PATH", "") if kind == "reranker" else name)
        if not path.is_dir():
            where = "RERANKER_MODEL_PATH" if kind == "reranker" else f"model {name!r}"
            raise SystemExit(f"{where} is neither tiny, bench nor a checkpoint directory")
        return path
    path = named[name]
    from tools.checkpoint import build_tiny_checkpoint, is_complete_checkpoint

    if not is_complete_checkpoint(path):
        log(f"building the {name} {kind} checkpoint in {path} ...")
        build_tiny_checkpoint(path, kind=kind, size=name)
    return path


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def host_tag(device: str = "cpu") -> str:
    """A short name for the machine class results were taken on, e.g. `cpu-x86_64-2c`, `cuda-h100-80gb`.
    PERF_HOST_TAG overrides it."""
    if os.environ.get("PERF_HOST_TAG"):
        return os.environ["PERF_HOST_TAG"]
    kind = device.split(":")[0]
    if kind == "cpu":
        return f"cpu-{platform.machine()}-{os.cpu_count()}c"
    name = accelerator_name(device)
    return f"{kind}-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}"


def accelerator_name(device: str) -> str:
    import torch

    kind = device.split(":")[0]
    try:
        if kind == "cuda":
            return torch.cuda.get_device_name(0).replace("NVIDIA ", "")
        if kind == "npu":
            import torch_npu  # noqa: F401

            return torch.npu.get_device_name(0)
    except Exception:
        pass
    return kind


def new_run_dir(tag: str, base: Path = RESULTS, run_dir: Path | None = None) -> Path:
    """`<base>/<tag>/<YYYY-MM-DD>/`; a later run the same day gets `<date>_<HHMMSS>` instead of mixing in."""
    if run_dir is None:
        now = datetime.datetime.now()
        run_dir = base / tag / now.strftime("%Y-%m-%d")
        if (run_dir / "summary.md").exists() or (run_dir / "points.json").exists():
            run_dir = base / tag / now.strftime("%Y-%m-%d_%H%M%S")
    for sub in ("", "csv", "raw"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    return run_dir


def git_commit() -> str | None:
    """The checked-out commit, read from .git without running git."""
    head = REPO / ".git" / "HEAD"
    with contextlib.suppress(OSError):
        text = head.read_text().strip()
        if not text.startswith("ref: "):
            return text[:12]
        ref = text[5:]
        ref_file = REPO / ".git" / ref
        if ref_file.exists():
            return ref_file.read_text().strip()[:12]
        packed = REPO / ".git" / "packed-refs"
        for line in packed.read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0][:12]
    return None


def busy_processes() -> list[str]:
    """Other CPU-hungry processes right now (what else was running), from /proc, no extra tools."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = []
    me = os.getpid()
    samples: dict[int, tuple[str, int]] = {}
    for when in (0, 1):
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int(stat.parent.name)
                raw = stat.read_text()
                name = raw[raw.index("(") + 1 : raw.rindex(")")]
                fields = raw.rpartition(")")[2].split()
                used = int(fields[11]) + int(fields[12])
                if when == 0:
                    samples[pid] = (name, used)
                elif pid in samples and pid != me:
                    share = (used - samples[pid][1]) / ticks
                    if share >= 0.2:
                        found.append(f"{name} (pid {pid}, {share:.0%} of a core)")
        if when == 0:
            time.sleep(1.0)
    return found


# ----------------------------------------------------------------------------------------------------------
# Servers
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Endpoint:
    """A server to measure: one this script started (`server` set) or one that was already running."""

    label: str
    http: str
    grpc: str
    metrics_url: str
    model_path: str = ""
    server: object | None = None
    log_path: str = ""

    def url(self, protocol: str) -> str:
        return self.http if protocol == "http" else self.grpc

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()  # type: ignore[attr-defined]
            self.server = None


def http_get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def serves_embedding(http: str) -> bool:
    try:
        http_get(f"http://{http}/v2/models/{ENSEMBLE}/ready", timeout=2.0)
        return True
    except (urllib.error.URLError, OSError):
        return False


def running_server(label: str = "served") -> Endpoint | None:
    """The server `make serve` runs (TRITON_*_PORT on localhost), if it is up and serves the ensemble."""
    http_port = os.environ.get("TRITON_HTTP_PORT", "8000")
    endpoint = Endpoint(
        label=label,
        http=f"127.0.0.1:{http_port}",
        grpc=f"127.0.0.1:{os.environ.get('TRITON_GRPC_PORT', '8001')}",
        metrics_url=f"http://127.0.0.1:{os.environ.get('TRITON_METRICS_PORT', '8002')}/metrics",
        model_path=os.environ.get("MODEL_PATH", "(running server)"),
    )
    return endpoint if serves_embedding(endpoint.http) else None


def _set_environment(values: Mapping[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@contextlib.contextmanager
def environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """`values` in os.environ for the block (None: unset), then what was there before."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        _set_environment(values)
        yield
    finally:
        _set_environment(saved)


def start_server(
    label: str,
    model: Path,
    log_path: Path,
    repository: Path = MODEL_REPOSITORY,
    env: Mapping[str, str] | None = None,
    startup_timeout: float = 900.0,
    ensembles: Sequence[str] = (ENSEMBLE,),
) -> Endpoint:
    """tritonserver on free ports serving only `ensembles` (default the embedding one, each with its two
    steps) of `repository`. `model` is the embedding checkpoint; a reranker's comes in `env`
    (RERANKER_MODEL_PATH)."""
    from tools.launcher import TritonServer

    overrides: dict[str, str | None] = dict.fromkeys(SERVER_OVERRIDES)
    overrides.update({"MODEL_PATH": str(model), "TOKENIZERS_PARALLELISM": "false"})
    overrides.update(env or {})
    started = time.monotonic()
    with environment(overrides):
        server = TritonServer(
            repository,
            log_path=log_path,
            extra_args=["--model-control-mode=explicit"] + [f"--load-model={name}" for name in ensembles],
            startup_timeout=startup_timeout,
        )
        server.start()
    log(f"  server '{label}' ready in {time.monotonic() - started:.1f} s (http {server.http_port})")
    return Endpoint(
        label=label,
        http=server.http_url,
        grpc=server.grpc_url,
        metrics_url=server.metrics_url,
        model_path=str(model),
        server=server,
        log_path=str(log_path),
    )


def variant_repository(dest: Path, edits: Mapping[str, Callable[[str], str]]) -> Path:
    """A copy of the embedding models of model_repository/ with some config.pbtxt files edited
    (`edits`: model name -> function of the config text). The real repository is never touched."""
    if dest.exists():
        shutil.rmtree(dest)
    for name in EMBEDDING_MODELS:
        shutil.copytree(MODEL_REPOSITORY / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        if name in edits:
            config = dest / name / "config.pbtxt"
            config.write_text(edits[name](config.read_text()))
    return dest


def without_dynamic_batching(config: str) -> str:
    """Drop the `dynamic_batching { ... }` block: every execute() then gets exactly one request."""
    edited, count = re.subn(r"\ndynamic_batching\s*\{[^{}]*\}", "\n", config)
    if count != 1:
        raise ValueError("expected exactly one dynamic_batching block")
    return edited


def with_parameter(name: str, value: str) -> Callable[[str], str]:
    def edit(config: str) -> str:
        pattern = rf'(parameters \{{ key: "{re.escape(name)}" value: \{{ string_value: )"[^"]*"'
        edited, count = re.subn(pattern, rf'\1"{value}"', config)
        if count != 1:
            raise ValueError(f"parameter {name!r} not found")
        return edited

    return edit


def compose(*edits: Callable[[str], str]) -> Callable[[str], str]:
    def edit(config: str) -> str:
        for step in edits:
            config = step(config)
        return config

    return edit


# ----------------------------------------------------------------------------------------------------------
# Server statistics and metrics
# ----------------------------------------------------------------------------------------------------------


def parse_prometheus(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    line_re = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
    label_re = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = line_re.match(line)
        if not match:
            continue
        labels = tuple(sorted(label_re.findall(match.group(3) or "")))
        with contextlib.suppress(ValueError):
            samples[(match.group(1), labels)] = float(match.group(4))
    return samples


def snapshot(endpoint: Endpoint) -> dict:
    """Triton's per-model statistics (the ensemble and its composing models) and the metrics page."""
    stats = json.loads(http_get(f"http://{endpoint.http}/v2/models/stats"))
    by_model = {entry["name"]: entry for entry in stats.get("model_stats", []) if entry["name"] in ALL_MODELS}
    metrics = {}
    if endpoint.metrics_url:
        with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
            metrics = parse_prometheus(http_get(endpoint.metrics_url).decode())
    return {"stats": by_model, "metrics": metrics, "time": time.time()}


def _ns(entry: dict, key: str) -> tuple[int, int]:
    value = entry.get("inference_stats", {}).get(key, {})
    return int(value.get("count", 0)), int(value.get("ns", 0))


def stats_delta(before: dict, after: dict) -> dict[str, dict]:
    """Per model: requests, executions, average ms per request in each stage, execute batch sizes seen."""
    out = {}
    for name, now in after["stats"].items():
        old = before["stats"].get(name, {})
        row: dict = {
            "requests": _ns(now, "success")[0] - (_ns(old, "success")[0] if old else 0),
            "failures": _ns(now, "fail")[0] - (_ns(old, "fail")[0] if old else 0),
            "inferences": int(now.get("inference_count", 0)) - int(old.get("inference_count", 0)),
            "executions": int(now.get("execution_count", 0)) - int(old.get("execution_count", 0)),
        }
        for key in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
            count_now, ns_now = _ns(now, key)
            count_old, ns_old = _ns(old, key) if old else (0, 0)
            count = count_now - count_old
            row[f"{key}_ms"] = (ns_now - ns_old) / count / 1e6 if count else 0.0
        sizes: dict[int, int] = {}
        old_sizes = {b["batch_size"]: b["compute_infer"]["count"] for b in old.get("batch_stats", [])}
        for entry in now.get("batch_stats", []):
            executed = entry["compute_infer"]["count"] - old_sizes.get(entry["batch_size"], 0)
            if executed:
                sizes[int(entry["batch_size"])] = executed
        row["batch_sizes"] = dict(sorted(sizes.items()))
        out[name] = row
    return out


def _metric_total(samples: Mapping, name: str, **labels: str) -> float:
    total = 0.0
    for (sample, sample_labels), value in samples.items():
        if sample == name and all((k, v) in sample_labels for k, v in labels.items()):
            total += value
    return total


def custom_delta(before: dict, after: dict, pipeline: Pipeline = EMBEDDING) -> dict:
    """The qwen3vl_* metrics `pipeline`'s Python models export (backend/metrics.py), as differences."""

    def delta(name: str, **labels: str) -> float:
        return sum(
            _metric_total(after["metrics"], name, model=model, **labels)
            - _metric_total(before["metrics"], name, model=model, **labels)
            for model in (pipeline.preprocess, pipeline.model_step)
        )

    out = {
        "rows": delta("qwen3vl_rows_total"),
        "tokens": delta("qwen3vl_tokens_total"),
        "padded_tokens": delta("qwen3vl_padded_tokens_total"),
        "micro_batches": delta("qwen3vl_micro_batches_total"),
        "forward_seconds": delta("qwen3vl_forward_seconds_total"),
        "compiled_micro_batches": delta("qwen3vl_compiled_micro_batches_total"),
        "recompiles": delta("qwen3vl_recompiles_total"),
        "executes": delta("qwen3vl_rows_per_execute_count"),
        "preprocess_tokens": delta("qwen3vl_preprocess_tokens_total"),
        "preprocess_seconds": {},
        "preprocess_items": {},
        "rows_per_execute": {},
    }
    for modality in ("text", "image", "video"):
        items = delta("qwen3vl_preprocess_items_total", modality=modality)
        seconds = delta("qwen3vl_preprocess_seconds_total", modality=modality)
        if items or seconds > 1e-3:
            out["preprocess_items"][modality] = items
            out["preprocess_seconds"][modality] = seconds
    buckets = sorted(
        {
            dict(labels)["le"]
            for (name, labels) in after["metrics"]
            if name == "qwen3vl_rows_per_execute_bucket"
        },
        key=lambda le: float("inf") if le == "+Inf" else float(le),
    )
    previous = 0.0
    for le in buckets:
        cumulative = delta("qwen3vl_rows_per_execute_bucket", le=le)
        if cumulative - previous:
            out["rows_per_execute"][le] = cumulative - previous
        previous = cumulative
    out["seconds"] = after["time"] - before["time"]
    return out


def group_cpu_seconds(pgid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of each process in a server's process group, by role."""
    ticks = os.sysconf("SC_CLK_TCK")
    usage: dict[str, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[2]) != pgid:
                continue
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            role = "tritonserver"
            for model in ALL_MODELS:
                if f"/{model}/" in cmdline:
                    role = model
            usage[role] = usage.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return usage


def children_cpu_seconds() -> float:
    """CPU seconds of this process's finished children (perf_analyzer runs)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ----------------------------------------------------------------------------------------------------------
# perf_analyzer
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Measurement:
    """How perf_analyzer measures one point. `auto`: stable time windows, falling back to one fixed request
    count when the windows do not settle (2 shared cores are noisy); `count`: a fixed request count only."""

    mode: str = "auto"  # auto | windows | count
    interval_ms: int = 3000
    stability: int = 50
    max_trials: int = 5
    point_seconds: float = 8.0  # target length of a count-mode measurement
    request_count: int = 0  # count mode: fixed number of requests (0 = from point_seconds)
    timeout_s: float = 300.0


def perf_analyzer_binary() -> str:
    candidate = Path(sys.prefix) / "bin" / "perf_analyzer"
    return str(candidate) if candidate.exists() else "perf_analyzer"


def perf_analyzer_env() -> dict[str, str]:
    from tools.launcher import (
        default_runtime_dir,
        find_triton,
        prepare_runtime_dir,
    )
    from tools.launcher import (
        perf_analyzer_env as launcher_env,
    )

    install = find_triton()
    return launcher_env(prepare_runtime_dir(default_runtime_dir(), install), install)


CSV_FIELDS_MS = {
    "p50 latency": "p50_ms",
    "p90 latency": "p90_ms",
    "p95 latency": "p95_ms",
    "p99 latency": "p99_ms",
    "Avg latency": "avg_ms",
    "Client Send": "client_send_ms",
    "Network+Server Send/Recv": "network_ms",
    "Server Queue": "server_queue_ms",
    "Server Compute Input": "server_compute_input_ms",
    "Server Compute Infer": "server_compute_infer_ms",
    "Server Compute Output": "server_compute_output_ms",
    "Client Recv": "client_recv_ms",
}


def read_csv_row(path: Path) -> tuple[list[str], dict[str, str]]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    header, values = rows[0], rows[1]
    return header, dict(zip(header, values))


@dataclass
class Point:
    model: str
    workload: str
    protocol: str
    concurrency: int
    ok: bool = False
    throughput: float = 0.0  # requests (= rows) per second
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    avg_ms: float = 0.0
    client: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)
    custom: dict = field(default_factory=dict)
    mode: str = ""
    seconds: float = 0.0
    cpu: dict = field(default_factory=dict)  # cores used on average during the run, by process role
    profile: dict = field(default_factory=dict)  # py-spy breakdown by model step (perf/profiling.py)
    load1: float = 0.0  # 1-minute load average at the end (what else was running shows here)
    csv: str = ""
    error: str = ""
    tag: str = ""  # which sweep / comparison this point belongs to
    ensemble: str = ENSEMBLE  # which public ensemble perf_analyzer sent the requests to

    def as_dict(self) -> dict:
        return asdict(self)


def _last_throughput(text: str) -> float:
    found = re.findall(r"[Tt]hroughput: ([0-9.]+) infer/sec", text)
    return float(found[-1]) if found else 0.0


def last_throughput(log_path: Path) -> float:
    """The last rate a perf_analyzer log printed (a settled result or, with -v, a window's)."""
    return _last_throughput(_read(log_path))


def run_perf_analyzer(
    endpoint: Endpoint,
    protocol: str,
    data: Path,
    concurrency: int,
    measurement: Measurement,
    csv_path: Path,
    log_path: Path,
    expected_throughput: float = 0.0,
    ensemble: str = ENSEMBLE,
) -> tuple[str, str]:
    """Run one measurement; returns (mode used, error or ""). The CSV lands at csv_path on success."""
    base = [
        perf_analyzer_binary(),
        "-m",
        ensemble,
        "-u",
        endpoint.url(protocol),
        "-i",
        protocol,
        "--input-data",
        str(data),
        "--concurrency-range",
        f"{concurrency}:{concurrency}",
        "-f",
        str(csv_path),
    ]
    windows = [
        "--measurement-mode",
        "time_windows",
        "-p",
        str(measurement.interval_ms),
        "-s",
        str(measurement.stability),
        "-r",
        str(measurement.max_trials),
    ]
    env = perf_analyzer_env()
    error = ""
    with log_path.open("a") as out:
        hung: list[bool] = []

        def attempt(extra: list[str]) -> tuple[bool, str]:
            command = base + extra
            out.write(f"$ {' '.join(command)}\n")
            out.flush()
            csv_path.unlink(missing_ok=True)
            try:
                result = subprocess.run(
                    command,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    timeout=measurement.timeout_s,
                    start_new_session=True,
                )
                text, returncode = result.stdout, result.returncode
            except subprocess.TimeoutExpired as timeout:
                raw = timeout.stdout or b""
                text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
                returncode = -signal.SIGKILL
                hung.append(True)
            out.write(text + "\n")
            out.flush()
            if returncode == 0 and csv_path.exists():
                return True, text
            return False, _error_line(text) or f"perf_analyzer exited with {returncode}"

        def counted(requests: int) -> tuple[bool, str]:
            hung.clear()
            ok, text = attempt(["--request-count", str(requests)])
            if not ok and hung:
                # perf_analyzer 2.50 sometimes never exits in --request-count mode although the server
                # answered every request (about 1 run in 15 here; time windows never hung): once more.
                out.write("perf_analyzer hung in --request-count mode; running it once more\n")
                ok, text = attempt(["--request-count", str(requests)])
            return ok, text

        if measurement.mode in ("auto", "windows"):
            # -v prints every window, so a run that never settles still says how fast the server went.
            ok, text = attempt(windows + ["-v"])
            if ok:
                return "windows", ""
            error = text
            if measurement.mode == "windows":
                return "windows", error
            expected_throughput = _last_throughput(_read(log_path)) or expected_throughput
        # A fixed request count: one measurement, no stability check. perf_analyzer's throughput is only
        # right when the run lasts well over a second, so an unknown rate is probed first (Little's law:
        # throughput = concurrency / mean latency) and the real run sized from it.
        if measurement.request_count:
            count = measurement.request_count
        else:
            if not expected_throughput:
                ok, text = counted(max(4 * concurrency, 8))
                if not ok:
                    return "count", text
                expected_throughput = concurrency / max(read_csv_latency_s(csv_path), 1e-6)
            count = max(2 * concurrency, 16, int(expected_throughput * measurement.point_seconds))
        ok, text = counted(count)
        return "count", "" if ok else text


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def read_csv_latency_s(path: Path) -> float:
    """Mean client latency of a perf_analyzer CSV row: the sum of its stage columns, in seconds."""
    _, row = read_csv_row(path)
    parts = [c for c in CSV_FIELDS_MS if c.startswith(("Client", "Network", "Server"))]
    return sum(float(row[c]) for c in parts if row.get(c)) / 1e6


def _error_line(text: str) -> str:
    for line in text.splitlines():
        if "error" in line.lower() or "failed" in line.lower():
            return line.strip()[:300]
    return ""


def measure(
    endpoint: Endpoint,
    workload: str,
    data: Path,
    protocol: str,
    concurrency: int,
    measurement: Measurement,
    run_dir: Path,
    tag: str,
    expected_throughput: float = 0.0,
    ensemble: str = ENSEMBLE,
) -> Point:
    """One perf_analyzer point plus what the server's statistics and metrics say happened meanwhile."""
    pipeline = pipeline_of(ensemble)
    point = Point(
        model=endpoint.label,
        workload=workload,
        protocol=protocol,
        concurrency=concurrency,
        tag=tag,
        ensemble=pipeline.ensemble,
    )
    name = f"{tag}-{endpoint.label}-{workload}-{protocol}-c{concurrency}"
    csv_path = run_dir / "raw" / f"{name}.csv"
    started = time.monotonic()
    server_pid = getattr(endpoint.server, "pid", None)
    cpu_before = group_cpu_seconds(server_pid) if server_pid else {}
    client_before = children_cpu_seconds()
    before = snapshot(endpoint)
    point.mode, point.error = run_perf_analyzer(
        endpoint,
        protocol,
        data,
        concurrency,
        measurement,
        csv_path,
        run_dir / "raw" / f"{name}.log",
        expected_throughput,
        pipeline.ensemble,
    )
    point.seconds = time.monotonic() - started
    point.load1 = os.getloadavg()[0]
    if server_pid:
        cpu_after = group_cpu_seconds(server_pid)
        point.cpu = {
            role: (cpu_after[role] - cpu_before.get(role, 0.0)) / point.seconds for role in cpu_after
        }
    point.cpu["perf_analyzer"] = (children_cpu_seconds() - client_before) / point.seconds
    p99_s = 2.0
    if not point.error:
        with contextlib.suppress(KeyError, ValueError, IndexError):
            p99_s = float(read_csv_row(csv_path)[1]["p99 latency"]) / 1e6
    settle(endpoint, quiet_s=max(0.5, 1.5 * p99_s), pipeline=pipeline)
    point.custom["nudge_rows"] = nudge(endpoint, pipeline)
    after = snapshot(endpoint)
    point.stages = {name: row for name, row in stats_delta(before, after).items() if name in pipeline.models}
    point.custom = {**custom_delta(before, after, pipeline), "nudge_rows": point.custom["nudge_rows"]}
    point.custom["seconds"] = point.seconds
    if not point.error:
        header, row = read_csv_row(csv_path)
        point.ok = True
        point.throughput = float(row["Inferences/Second"])
        for column, key in CSV_FIELDS_MS.items():
            if column in row and row[column] != "":
                value = float(row[column]) / 1000.0
                if hasattr(point, key):
                    setattr(point, key, value)
                else:
                    point.client[key] = value
        if not point.avg_ms:
            point.avg_ms = sum(point.client.values())
        merged = run_dir / "csv" / f"{tag}-{endpoint.label}-{workload}-{protocol}.csv"
        fresh = not merged.exists()
        with merged.open("a", newline="") as f:
            writer = csv.writer(f)
            if fresh:
                writer.writerow(header)
            writer.writerow([row[column] for column in header])
        point.csv = str(merged.relative_to(run_dir))
    return point


def _ensemble_done(endpoint: Endpoint, ensemble: str = ENSEMBLE) -> int:
    entry = snapshot(endpoint)["stats"].get(ensemble, {})
    return _ns(entry, "success")[0] + _ns(entry, "fail")[0] if entry else 0


def settle(
    endpoint: Endpoint, quiet_s: float, timeout_s: float = 120.0, pipeline: Pipeline = EMBEDDING
) -> None:
    """Wait until the requests perf_analyzer left in flight when it exited are answered: the ensemble's
    count of finished requests has not moved for `quiet_s` (1.5 x the point's p99 latency)."""
    deadline = time.monotonic() + timeout_s
    last, since = _ensemble_done(endpoint, pipeline.ensemble), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet_s:
        time.sleep(0.1)
        now = _ensemble_done(endpoint, pipeline.ensemble)
        if now != last:
            last, since = now, time.monotonic()


def preprocess_instances(endpoint: Endpoint, pipeline: Pipeline = EMBEDDING) -> int:
    try:
        config = json.loads(http_get(f"http://{endpoint.http}/v2/models/{pipeline.preprocess}/config"))
        return max(1, sum(int(group.get("count", 1)) for group in config.get("instance_group", [])))
    except (urllib.error.URLError, OSError, ValueError):
        return 2


def nudge(endpoint: Endpoint, pipeline: Pipeline = EMBEDDING) -> int:
    """Requests of one short row each, sent together once the Python models' metric flush interval has
    passed, one per preprocess instance, so that every stub sends what it still holds (backend/metrics.py)
    and the snapshot after them is complete. They are counted in the point's statistics (returns how many)."""
    import threading

    from backend.metrics import FLUSH_SECONDS

    time.sleep(FLUSH_SECONDS + 0.05)
    inputs = [
        {"name": name, "shape": [1, 1], "datatype": "BYTES", "data": ["flush"]}
        for name in pipeline.nudge_inputs
    ]
    body = json.dumps({"inputs": inputs})

    def send() -> None:
        request = urllib.request.Request(
            f"http://{endpoint.http}/v2/models/{pipeline.ensemble}/infer",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        with contextlib.suppress(urllib.error.URLError, OSError):
            urllib.request.urlopen(request, timeout=60).read()

    count = preprocess_instances(endpoint, pipeline)
    threads = [threading.Thread(target=send) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return count


def describe(point: Point) -> str:
    if not point.ok:
        return f"FAILED ({point.error})"
    model = point.stages.get(pipeline_of(point.ensemble).model_step, {})
    rows_per_exec = model["inferences"] / model["executions"] if model.get("executions") else 0.0
    text = (
        f"{point.throughput:8.2f} infer/s  p50 {point.p50_ms:8.1f} ms  p99 {point.p99_ms:8.1f} ms  "
        f"rows/exec {rows_per_exec:5.1f}"
    )
    if point.custom.get("tokens"):
        text += f"  padded/real {point.custom['padded_tokens'] / point.custom['tokens']:.3f}"
    return text + f"  [{point.mode}, {point.seconds:.0f} s]"


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=False, default=str) + "\n")


def parse_list(text: str | Sequence[str], kind=str) -> list:
    items = text.split(",") if isinstance(text, str) else list(text)
    return [kind(item.strip()) for item in items if str(item).strip()]
