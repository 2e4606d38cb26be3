"""Custom Prometheus metrics the Python models export on Triton's metrics port (`pb_utils.MetricFamily`).

Both pipelines' steps export them (embedding and reranker model.py files), told apart by the label.
Families (all labelled `model`; totals are counters, per-execute sizes histograms):

    qwen3vl_rows_total                    rows (items) embedded, or (query, document) pairs scored
    qwen3vl_tokens_total                  real tokens computed (prompt + vision tokens, no padding)
    qwen3vl_padded_tokens_total           tokens computed counting padding (rows x longest row per
                                          micro-batch); padded / real = padding waste
    qwen3vl_micro_batches_total           forward passes
    qwen3vl_forward_seconds_total         time in forward passes (incl. pooling)
    qwen3vl_compiled_micro_batches_total  forward passes that ran the torch.compile'd text graph
    qwen3vl_recompiles_total              graphs compiled after warm-up (a request waited; should stay 0)
    qwen3vl_rows_per_execute              histogram: rows handed to one execute() (its _count = executes)
    qwen3vl_preprocess_seconds_total      preprocessing time, label `modality` = text | image | video
    qwen3vl_preprocess_items_total        rows holding that modality, label `modality`
    qwen3vl_preprocess_tokens_total       tokens produced by preprocessing (after vision expansion)

Values come from counters the backend already keeps (`BatchStats`, `EmbeddingPreprocessor.timings`):
`record()` adds what changed since its last call. Outside Triton (unit tests, in-process benchmarks)
`triton_python_backend_utils` does not exist and every call is a cheap no-op; tests pass their own `pb`.

Each update is a round trip to the server process, and the stub spins on a CPU while it waits (15-60 us
idle; under load on 2 cores py-spy found half of a preprocess stub's busy time there when every execute()
sent its own). So updates are summed in the stub and sent at most every FLUSH_SECONDS, one call per metric
that changed (histograms: one per observation): the exported values lag the work by up to that long, and
what the last execute() before a pause did is sent with the next one (or at unload).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

PREFIX = "qwen3vl_"
EXECUTE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
FLUSH_SECONDS = 0.2
MODALITIES = ("text", "image", "video")
# Which public inputs hold each modality's content (a row counts once if any of them has it).
MODALITY_INPUTS = {"text": ("TEXT",), "image": ("IMAGE",), "video": ("VIDEO",)}
RERANK_MODALITY_INPUTS = {
    modality: (f"QUERY_{name}", f"DOCUMENT_{name}")
    for modality, name in (("text", "TEXT"), ("image", "IMAGE"), ("video", "VIDEO"))
}


def triton_utils() -> Any | None:
    """`triton_python_backend_utils` when running inside Triton's Python stub, else None."""
    try:
        import triton_python_backend_utils as pb_utils
    except ImportError:
        return None
    return pb_utils if hasattr(pb_utils, "MetricFamily") else None


@dataclass(frozen=True)
class _Spec:
    name: str
    description: str
    kind: str  # COUNTER | HISTOGRAM


class MetricSet:
    """Metric families created once (in `initialize`), one metric per label set, created on first use;
    `add` / `observe` collect, `flush` sends (when FLUSH_SECONDS have passed since the last send, or always
    with `force`).

    A family or metric Triton refuses is logged once and then ignored: metrics never fail a request."""

    def __init__(
        self,
        model_name: str,
        specs: Sequence[_Spec],
        pb: Any | None = None,
        flush_seconds: float = FLUSH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.labels = {"model": model_name}
        self.pb = pb
        self.flush_seconds = flush_seconds
        self._clock = clock
        self._last_flush = clock()
        self._families: dict[str, Any] = {}
        self._metrics: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
        self._pending: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._observations: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = {}
        self._specs = {spec.name: spec for spec in specs}
        if pb is None:
            return
        for spec in specs:
            try:
                self._families[spec.name] = pb.MetricFamily(
                    name=PREFIX + spec.name,
                    description=spec.description,
                    kind=getattr(pb.MetricFamily, spec.kind),
                )
            except Exception as error:  # e.g. a Triton build without histograms
                logger.warning("metric family %s%s not created: %s", PREFIX, spec.name, error)

    @property
    def enabled(self) -> bool:
        return bool(self._families)

    def _key(self, name: str, extra: Mapping[str, str] | None):
        if name not in self._families:
            return None
        return (name, tuple(sorted({**self.labels, **(extra or {})}.items())))

    def _metric(self, key):
        name, labels = key[0], dict(key[1])
        family = self._families[name]
        if key not in self._metrics:
            try:
                if self._specs[name].kind == "HISTOGRAM":
                    self._metrics[key] = family.Metric(labels=labels, buckets=list(EXECUTE_BUCKETS))
                else:
                    self._metrics[key] = family.Metric(labels=labels)
            except Exception as error:
                logger.warning("metric %s%s%s not created: %s", PREFIX, name, labels, error)
                self._metrics[key] = None
        return self._metrics[key]

    def add(self, name: str, value: float, extra: Mapping[str, str] | None = None) -> None:
        if value > 0 and (key := self._key(name, extra)) is not None:
            self._pending[key] = self._pending.get(key, 0.0) + float(value)

    def observe(self, name: str, value: float, extra: Mapping[str, str] | None = None) -> None:
        if (key := self._key(name, extra)) is not None:
            self._observations.setdefault(key, []).append(float(value))

    def flush(self, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._last_flush < self.flush_seconds:
            return
        self._last_flush = now
        pending, observations = self._pending, self._observations
        self._pending, self._observations = {}, {}
        try:
            for key, value in pending.items():
                if (metric := self._metric(key)) is not None:
                    metric.increment(value)
            for key, values in observations.items():
                if (metric := self._metric(key)) is not None:
                    for value in values:
                        metric.observe(value)
        except Exception as error:  # an update that did not reach the server is lost, the requests are not
            logger.warning("metric update failed: %s", error)

    def close(self) -> None:
        """Send what is pending, then drop metrics before their families, as the Python backend requires."""
        if self.enabled:
            self.flush(force=True)
        self._metrics.clear()
        self._families.clear()


_AUTO = object()

MODEL_SPECS = (
    _Spec("rows_total", "Rows (items) embedded", "COUNTER"),
    _Spec("tokens_total", "Real tokens computed (prompt and vision tokens, no padding)", "COUNTER"),
    _Spec(
        "padded_tokens_total",
        "Tokens computed counting padding (rows x longest row per micro-batch)",
        "COUNTER",
    ),
    _Spec("micro_batches_total", "Forward passes (micro-batches)", "COUNTER"),
    _Spec("forward_seconds_total", "Seconds spent in forward passes, pooling included", "COUNTER"),
    _Spec("compiled_micro_batches_total", "Forward passes that ran the compiled text graph", "COUNTER"),
    _Spec("recompiles_total", "Graphs torch.compile compiled after warm-up (should stay 0)", "COUNTER"),
    _Spec("rows_per_execute", "Rows handed to one execute() call", "HISTOGRAM"),
)


class ModelMetrics:
    """For the torch model step: call `record(model.stats)` after each execute."""

    COUNTERS = (
        ("rows", "rows_total"),
        ("real_tokens", "tokens_total"),
        ("padded_tokens", "padded_tokens_total"),
        ("micro_batches", "micro_batches_total"),
        ("forward_seconds", "forward_seconds_total"),
        ("compiled_micro_batches", "compiled_micro_batches_total"),
        ("recompiles", "recompiles_total"),
    )

    def __init__(
        self, model_name: str, stats: Any | None = None, pb: Any = _AUTO, flush_seconds: float = FLUSH_SECONDS
    ):
        pb = triton_utils() if pb is _AUTO else pb
        self.metrics = MetricSet(model_name, MODEL_SPECS, pb, flush_seconds)
        # Whatever the stats hold already (the load-time warmup) is not traffic.
        self._last = self._snapshot(stats) if stats is not None else dict.fromkeys(dict(self.COUNTERS), 0)

    def _snapshot(self, stats: Any) -> dict[str, float]:
        return {field: getattr(stats, field, 0) for field, _ in self.COUNTERS}

    def record(self, stats: Any) -> None:
        now = self._snapshot(stats)
        delta = {field: now[field] - self._last[field] for field in now}
        self._last = now
        if not self.metrics.enabled:
            return
        for field, name in self.COUNTERS:
            self.metrics.add(name, delta[field])
        self.metrics.observe("rows_per_execute", delta["rows"])
        self.metrics.flush()

    def close(self) -> None:
        self.metrics.close()


PREPROCESS_SPECS = (
    _Spec("preprocess_seconds_total", "Seconds spent preparing each modality", "COUNTER"),
    _Spec("preprocess_items_total", "Rows holding each modality", "COUNTER"),
    _Spec("preprocess_tokens_total", "Tokens produced by preprocessing (vision tokens expanded)", "COUNTER"),
)


def _has_content(values: np.ndarray | None, row: int) -> bool:
    if values is None:
        return False
    return any(v is not None and len(v) for v in np.asarray(values[row], dtype=object).reshape(-1))


def modality_counts(
    inputs: Mapping[str, np.ndarray | None],
    modality_inputs: Mapping[str, Sequence[str]] = MODALITY_INPUTS,
) -> dict[str, int]:
    """Rows of one request that hold text, images, videos (a row may count for several; a reranker pair
    counts once for a modality either side holds)."""
    counts = dict.fromkeys(MODALITIES, 0)
    sizes = [int(value.shape[0]) for value in inputs.values() if value is not None]
    for row in range(sizes[0] if sizes else 0):
        for modality, names in modality_inputs.items():
            counts[modality] += any(_has_content(inputs.get(name), row) for name in names)
    return counts


class PreprocessMetrics:
    """For the preprocess step: call `record(inputs, results, preprocessor.timings)` after each execute."""

    def __init__(
        self,
        model_name: str,
        timings: Mapping[str, float] | None = None,
        pb: Any = _AUTO,
        flush_seconds: float = FLUSH_SECONDS,
        modality_inputs: Mapping[str, Sequence[str]] = MODALITY_INPUTS,
    ):
        pb = triton_utils() if pb is _AUTO else pb
        self.metrics = MetricSet(model_name, PREPROCESS_SPECS, pb, flush_seconds)
        self.modality_inputs = modality_inputs
        self._last = dict(timings or {})

    def record(
        self,
        inputs: Sequence[Mapping[str, np.ndarray | None] | None],
        results: Sequence[Mapping[str, np.ndarray] | Exception],
        timings: Mapping[str, float],
    ) -> None:
        """A request of None (cancelled by its client) has an exception for its result."""
        delta = {modality: seconds - self._last.get(modality, 0.0) for modality, seconds in timings.items()}
        self._last = dict(timings)
        if not self.metrics.enabled:
            return
        for modality, seconds in delta.items():
            self.metrics.add("preprocess_seconds_total", seconds, {"modality": modality})
        totals, tokens = dict.fromkeys(MODALITIES, 0), 0
        for request, result in zip(inputs, results):
            if request is None or isinstance(result, Exception):
                continue
            for modality, count in modality_counts(request, self.modality_inputs).items():
                totals[modality] += count
            lengths = result.get("SEQ_LEN")
            if lengths is not None:
                tokens += int(np.asarray(lengths).sum())
        self.metrics.add("preprocess_tokens_total", tokens)
        for modality, count in totals.items():
            self.metrics.add("preprocess_items_total", count, {"modality": modality})
        self.metrics.flush()

    def close(self) -> None:
        self.metrics.close()
