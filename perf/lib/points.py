"""The record of one measured point: what perf_analyzer saw (throughput, latencies) and what the server
says happened meanwhile (per-model statistics, the qwen3vl_* metrics, CPU by process). points.json holds
these as JSON (`Point.as_dict`); `Point.from_dict` reads them back, also from runs written before a field
existed."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from perf.lib.pipelines import ENSEMBLE, pipeline_of

T = TypeVar("T")


def _known(cls: type[T], record: dict[str, Any]) -> dict[str, Any]:
    """The fields of `cls` found in `record`; a key `cls` does not have fails loudly."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(record) - names
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    return dict(record)


@dataclass
class StageStats:
    """One model's Triton statistics over a point (differences of /v2/models/stats): requests,
    executions, average ms per request in each stage, executions by batch size."""

    requests: int = 0
    failures: int = 0
    inferences: int = 0
    executions: int = 0
    success_ms: float = 0.0
    queue_ms: float = 0.0
    compute_input_ms: float = 0.0
    compute_infer_ms: float = 0.0
    compute_output_ms: float = 0.0
    batch_sizes: dict[int, int] = field(default_factory=dict)
    cache_hits: int = 0  # requests Triton's response cache answered (counted in `requests`)

    @property
    def rows_per_execute(self) -> float:
        return self.inferences / self.executions if self.executions else 0.0

    @property
    def compute_ms(self) -> float:
        return self.compute_input_ms + self.compute_infer_ms + self.compute_output_ms

    @property
    def max_batch(self) -> int:
        return max(self.batch_sizes, default=0)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> StageStats:
        values = _known(cls, record)
        # JSON object keys are strings.
        values["batch_sizes"] = {int(size): int(n) for size, n in values.get("batch_sizes", {}).items()}
        return cls(**values)


@dataclass
class CustomMetrics:
    """The qwen3vl_* metrics a pipeline's Python models export (backend/metrics.py), as differences over
    a point. `nudge_rows`: the short rows sent after the point so the stubs flush what they hold."""

    rows: float = 0.0
    tokens: float = 0.0
    padded_tokens: float = 0.0
    micro_batches: float = 0.0
    forward_seconds: float = 0.0
    compiled_micro_batches: float = 0.0
    recompiles: float = 0.0
    executes: float = 0.0
    preprocess_tokens: float = 0.0
    preprocess_seconds: dict[str, float] = field(default_factory=dict)  # by modality
    preprocess_items: dict[str, float] = field(default_factory=dict)  # by modality
    rows_per_execute: dict[str, float] = field(default_factory=dict)  # executes by histogram bucket
    seconds: float = 0.0
    nudge_rows: int = 0

    @property
    def padding_ratio(self) -> float | None:
        """Padded ÷ real tokens."""
        return self.padded_tokens / self.tokens if self.tokens else None

    @property
    def tokens_per_row(self) -> float | None:
        return self.tokens / self.rows if self.rows else None

    @property
    def rows_per_forward(self) -> float | None:
        return self.rows / self.micro_batches if self.micro_batches else None

    @property
    def forward_ms_per_row(self) -> float | None:
        return self.forward_seconds * 1000 / self.rows if self.rows else None

    @property
    def tokens_per_second(self) -> float | None:
        return self.tokens / self.seconds if self.seconds else None

    def preprocess_ms_per_item(self) -> dict[str, float]:
        """Prompt + tokenise ms per row (every row has a prompt), image / video ms per row holding one.

        The metrics are sent every 0.2 s, so a point may hold the last items of the point before it: a
        modality on fewer than 5 % of the rows is left out rather than shown as a per-item time of a stray
        item or two."""
        seconds, items, rows = self.preprocess_seconds, self.preprocess_items, self.rows
        out = {}
        if rows and "text" in seconds:
            out["text"] = 1000 * seconds["text"] / rows
        for modality in ("image", "video"):
            if rows and items.get(modality, 0) >= 0.05 * rows and modality in seconds:
                out[modality] = 1000 * seconds[modality] / items[modality]
        return out

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> CustomMetrics:
        return cls(**_known(cls, record))


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
    client: dict[str, float] = field(default_factory=dict)  # perf_analyzer's other latency columns, ms
    stages: dict[str, StageStats] = field(default_factory=dict)  # by model name
    custom: CustomMetrics = field(default_factory=CustomMetrics)
    mode: str = ""
    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # cores used on average during the run, by role
    profile: dict[str, Any] = field(
        default_factory=dict
    )  # py-spy breakdown by model step (perf/lib/profiling.py)
    load1: float = 0.0  # 1-minute load average at the end (what else was running shows here)
    csv: str = ""
    error: str = ""
    tag: str = ""  # which sweep / comparison this point belongs to
    ensemble: str = ENSEMBLE  # which public ensemble perf_analyzer sent the requests to

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Point:
        values = _known(cls, record)
        values["stages"] = {name: StageStats.from_dict(row) for name, row in values.get("stages", {}).items()}
        values["custom"] = CustomMetrics.from_dict(values.get("custom", {}))
        return cls(**values)

    def stage(self, model: str) -> StageStats:
        """`model`'s statistics (all zero when the point has none for it)."""
        return self.stages.get(model) or StageStats()

    @property
    def model_step(self) -> StageStats:
        """The statistics of the point's torch model step (the embedding or the reranker one)."""
        return self.stage(pipeline_of(self.ensemble).model_step)

    @property
    def cache_hits(self) -> int:
        """Requests of the point the response cache answered without running the steps."""
        return self.stage(self.ensemble).cache_hits

    @property
    def preprocess_step(self) -> StageStats:
        return self.stage(pipeline_of(self.ensemble).preprocess)

    def describe(self) -> str:
        """One progress line."""
        if not self.ok:
            return f"FAILED ({self.error})"
        text = (
            f"{self.throughput:8.2f} infer/s  p50 {self.p50_ms:8.1f} ms  p99 {self.p99_ms:8.1f} ms  "
            f"rows/exec {self.model_step.rows_per_execute:5.1f}"
        )
        if self.custom.padding_ratio is not None:
            text += f"  padded/real {self.custom.padding_ratio:.3f}"
        if self.cache_hits:
            text += f"  response-cache hits {self.cache_hits} of {self.stage(self.ensemble).requests}"
        return text + f"  [{self.mode}, {self.seconds:.0f} s]"
