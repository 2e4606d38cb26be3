"""What the server says about a measurement: Triton's per-model statistics and the metrics page before and
after it, their differences, the CPU its processes used, and the waits that make the "after" complete
(requests still in flight answered, the Python models' metrics flushed)."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from perf.lib.pipelines import ALL_MODELS, EMBEDDING, Pipeline
from perf.lib.points import CustomMetrics, StageStats
from perf.lib.sampling import cpu_seconds_of, group_members
from perf.lib.servers import Endpoint, http_get

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]  # (metric, sorted labels) -> value


@dataclass
class Snapshot:
    """Triton's statistics of the measured models (by name, as /v2/models/stats gives them), the metrics
    page's samples, and when they were read."""

    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: Samples = field(default_factory=dict)
    time: float = 0.0


def parse_prometheus(text: str) -> Samples:
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


def snapshot(endpoint: Endpoint) -> Snapshot:
    """Triton's per-model statistics (the ensembles and their composing models) and the metrics page."""
    stats = json.loads(http_get(f"http://{endpoint.http}/v2/models/stats"))
    by_model = {entry["name"]: entry for entry in stats.get("model_stats", []) if entry["name"] in ALL_MODELS}
    metrics: Samples = {}
    if endpoint.metrics_url:
        with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
            metrics = parse_prometheus(http_get(endpoint.metrics_url).decode())
    return Snapshot(by_model, metrics, time.time())


def _ns(entry: dict, key: str) -> tuple[int, int]:
    value = entry.get("inference_stats", {}).get(key, {})
    return int(value.get("count", 0)), int(value.get("ns", 0))


def stats_delta(before: Snapshot, after: Snapshot) -> dict[str, StageStats]:
    """Per model: requests, executions, average ms per request in each stage, execute batch sizes seen."""
    out = {}
    for name, now in after.stats.items():
        old = before.stats.get(name, {})
        stage = StageStats(
            requests=_ns(now, "success")[0] - (_ns(old, "success")[0] if old else 0),
            failures=_ns(now, "fail")[0] - (_ns(old, "fail")[0] if old else 0),
            inferences=int(now.get("inference_count", 0)) - int(old.get("inference_count", 0)),
            executions=int(now.get("execution_count", 0)) - int(old.get("execution_count", 0)),
            cache_hits=_ns(now, "cache_hit")[0] - (_ns(old, "cache_hit")[0] if old else 0),
        )
        for key in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
            count_now, ns_now = _ns(now, key)
            count_old, ns_old = _ns(old, key) if old else (0, 0)
            count = count_now - count_old
            setattr(stage, f"{key}_ms", (ns_now - ns_old) / count / 1e6 if count else 0.0)
        sizes: dict[int, int] = {}
        old_sizes = {b["batch_size"]: b["compute_infer"]["count"] for b in old.get("batch_stats", [])}
        for entry in now.get("batch_stats", []):
            executed = entry["compute_infer"]["count"] - old_sizes.get(entry["batch_size"], 0)
            if executed:
                sizes[int(entry["batch_size"])] = executed
        stage.batch_sizes = dict(sorted(sizes.items()))
        out[name] = stage
    return out


def _metric_total(samples: Mapping, name: str, **labels: str) -> float:
    total = 0.0
    for (sample, sample_labels), value in samples.items():
        if sample == name and all((k, v) in sample_labels for k, v in labels.items()):
            total += value
    return total


def custom_delta(before: Snapshot, after: Snapshot, pipeline: Pipeline = EMBEDDING) -> CustomMetrics:
    """The qwen3vl_* metrics `pipeline`'s Python models export (backend/metrics.py), as differences."""

    def delta(name: str, **labels: str) -> float:
        return sum(
            _metric_total(after.metrics, name, model=model, **labels)
            - _metric_total(before.metrics, name, model=model, **labels)
            for model in (pipeline.preprocess, pipeline.model_step)
        )

    out = CustomMetrics(
        rows=delta("qwen3vl_rows_total"),
        tokens=delta("qwen3vl_tokens_total"),
        padded_tokens=delta("qwen3vl_padded_tokens_total"),
        micro_batches=delta("qwen3vl_micro_batches_total"),
        forward_seconds=delta("qwen3vl_forward_seconds_total"),
        compiled_micro_batches=delta("qwen3vl_compiled_micro_batches_total"),
        recompiles=delta("qwen3vl_recompiles_total"),
        executes=delta("qwen3vl_rows_per_execute_count"),
        preprocess_tokens=delta("qwen3vl_preprocess_tokens_total"),
    )
    for modality in ("text", "image", "video"):
        items = delta("qwen3vl_preprocess_items_total", modality=modality)
        seconds = delta("qwen3vl_preprocess_seconds_total", modality=modality)
        if items or seconds > 1e-3:
            out.preprocess_items[modality] = items
            out.preprocess_seconds[modality] = seconds
    buckets = sorted(
        {dict(labels)["le"] for (name, labels) in after.metrics if name == "qwen3vl_rows_per_execute_bucket"},
        key=lambda le: float("inf") if le == "+Inf" else float(le),
    )
    previous = 0.0
    for le in buckets:
        cumulative = delta("qwen3vl_rows_per_execute_bucket", le=le)
        if cumulative - previous:
            out.rows_per_execute[le] = cumulative - previous
        previous = cumulative
    out.seconds = after.time - before.time
    return out


def cpu_seconds_by_role(pgid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of each process in a server's process group, by role."""
    usage: dict[str, float] = {}
    for proc, fields in group_members(pgid):
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            role = "tritonserver"
            for model in ALL_MODELS:
                if f"/{model}/" in cmdline:
                    role = model
            usage[role] = usage.get(role, 0.0) + cpu_seconds_of(fields)
    return usage


def finished_requests(endpoint: Endpoint, ensemble: str) -> int:
    """Requests the ensemble has answered so far, successes and failures."""
    entry = snapshot(endpoint).stats.get(ensemble, {})
    return _ns(entry, "success")[0] + _ns(entry, "fail")[0] if entry else 0


def settle(
    endpoint: Endpoint, quiet_s: float, timeout_s: float = 120.0, pipeline: Pipeline = EMBEDDING
) -> None:
    """Wait until the requests perf_analyzer left in flight when it exited are answered: the ensemble's
    count of finished requests has not moved for `quiet_s` (1.5 x the point's p99 latency)."""
    deadline = time.monotonic() + timeout_s
    last, since = finished_requests(endpoint, pipeline.ensemble), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet_s:
        time.sleep(0.1)
        now = finished_requests(endpoint, pipeline.ensemble)
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
