"""backend.metrics: deltas of the backend's counters go to pb_utils metric families; no-op outside Triton."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np

from backend import metrics
from backend.runtime.backbone import BatchStats


class FakeMetric:
    def __init__(self, labels, buckets=None):
        self.labels, self.buckets = labels, buckets
        self.total, self.observed = 0.0, []

    def increment(self, value):
        assert value >= 0, "Prometheus counters only go up"
        self.total += value

    def observe(self, value):
        self.observed.append(value)


class FakeFamily:
    COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
    created: dict[str, FakeFamily] = {}

    def __init__(self, name, description, kind):
        self.name, self.kind, self.metrics = name, kind, []
        FakeFamily.created[name] = self

    def Metric(self, labels, buckets=None):  # noqa: N802 (pb_utils' spelling)
        if self.kind == self.HISTOGRAM:
            assert buckets == sorted(buckets)
        else:
            assert buckets is None
        metric = FakeMetric(labels, buckets)
        self.metrics.append(metric)
        return metric


def fake_pb():
    FakeFamily.created = {}
    return SimpleNamespace(MetricFamily=FakeFamily)


def value(name, **labels):
    family = FakeFamily.created[metrics.PREFIX + name]
    found = [m for m in family.metrics if all(m.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, [m.labels for m in family.metrics])
    return found[0]


def test_without_triton_everything_is_a_no_op():
    assert "triton_python_backend_utils" not in sys.modules
    assert metrics.triton_utils() is None
    stats = BatchStats()
    model_metrics = metrics.ModelMetrics("m", stats)
    stats.rows += 3
    model_metrics.record(stats)
    assert not model_metrics.metrics.enabled
    prep = metrics.PreprocessMetrics("p", {"text": 0.0})
    prep.record([{"TEXT": np.array([[b"x"]], dtype=object)}], [{"SEQ_LEN": np.array([[5]])}], {"text": 1.0})
    model_metrics.close()
    prep.close()


def test_model_metrics_export_deltas_since_the_last_execute():
    pb = fake_pb()
    stats = BatchStats(rows=1, micro_batches=1, real_tokens=5, padded_tokens=5, forward_seconds=0.1)  # warmup
    model_metrics = metrics.ModelMetrics("qwen3_vl_embedding_model", stats, pb=pb, flush_seconds=0)
    for rows, padded in ((4, 120), (2, 60)):
        stats.rows += rows
        stats.micro_batches += 1
        stats.real_tokens += 100
        stats.padded_tokens += padded
        stats.forward_seconds += 0.5
        model_metrics.record(stats)
    assert value("rows_total").total == 6
    assert value("tokens_total").total == 200
    assert value("padded_tokens_total").total == 180
    assert value("micro_batches_total").total == 2
    assert abs(value("forward_seconds_total").total - 1.0) < 1e-9
    assert value("rows_per_execute").observed == [4, 2]
    assert value("rows_total").labels == {"model": "qwen3_vl_embedding_model"}
    assert value("rows_per_execute").buckets == list(metrics.EXECUTE_BUCKETS)


def test_preprocess_metrics_count_modalities_tokens_and_time():
    pb = fake_pb()
    timings = {"text": 0.0, "image": 0.0, "video": 0.0}
    prep = metrics.PreprocessMetrics("qwen3_vl_embedding_preprocess", timings, pb=pb, flush_seconds=0)
    request = {
        "TEXT": np.array([[b"caption"], [b""], [b"only text"]], dtype=object),
        "IMAGE": np.array([[b"png", b""], [b"jpg", b"gif"], [b"", b""]], dtype=object),
        "VIDEO": None,
    }
    failed = {"TEXT": np.array([[b"bad"]], dtype=object)}
    timings.update(text=0.25, image=0.5)
    prep.record([request, failed], [{"SEQ_LEN": np.array([[10], [300], [7]])}, ValueError("x")], timings)
    assert value("preprocess_items_total", modality="text").total == 2
    assert value("preprocess_items_total", modality="image").total == 2
    assert not FakeFamily.created[metrics.PREFIX + "preprocess_items_total"].metrics[2:]  # no video metric
    assert not [
        m for m in FakeFamily.created[metrics.PREFIX + "preprocess_seconds_total"].metrics if m.total == 0
    ]
    assert value("preprocess_tokens_total").total == 317
    assert value("preprocess_seconds_total", modality="image").total == 0.5
    timings["text"] += 0.25
    prep.record([{"TEXT": np.array([[b"t"]], dtype=object)}], [{"SEQ_LEN": np.array([[3]])}], timings)
    assert value("preprocess_seconds_total", modality="text").total == 0.5
    assert value("preprocess_tokens_total").total == 320


def test_a_family_triton_refuses_is_skipped_not_fatal():
    class NoHistograms(FakeFamily):
        def __init__(self, name, description, kind):
            if kind == FakeFamily.HISTOGRAM:
                raise RuntimeError("histograms unsupported")
            super().__init__(name, description, kind)

    FakeFamily.created = {}
    stats = BatchStats()
    model_metrics = metrics.ModelMetrics(
        "m", stats, pb=SimpleNamespace(MetricFamily=NoHistograms), flush_seconds=0
    )
    stats.rows += 2
    model_metrics.record(stats)
    assert value("rows_total").total == 2
    assert metrics.PREFIX + "rows_per_execute" not in FakeFamily.created


def test_updates_are_summed_and_sent_at_most_every_flush_interval():
    """Each update is an IPC round trip to the server, so executes in between only add up locally."""
    pb = fake_pb()
    now = [100.0]
    stats = BatchStats()
    model_metrics = metrics.ModelMetrics("m", stats, pb=pb)
    model_metrics.metrics._clock = lambda: now[0]
    model_metrics.metrics._last_flush = now[0]
    for _ in range(3):  # three executes within one interval: nothing sent yet
        stats.rows += 2
        stats.real_tokens += 10
        now[0] += 0.05
        model_metrics.record(stats)
    assert not FakeFamily.created[metrics.PREFIX + "rows_total"].metrics
    now[0] += metrics.FLUSH_SECONDS
    stats.rows += 1
    model_metrics.record(stats)  # the interval has passed: one increment carries all four executes
    rows = value("rows_total")
    assert rows.total == 7 and value("tokens_total").total == 30
    assert value("rows_per_execute").observed == [2, 2, 2, 1]
    stats.rows += 5
    model_metrics.record(stats)  # pending until the next flush ...
    assert rows.total == 7
    model_metrics.close()  # ... or until the model is unloaded
    assert rows.total == 12


def test_a_failing_update_is_logged_not_raised(caplog):
    class Broken(FakeMetric):
        def increment(self, value):
            raise RuntimeError("stub lost the server")

    class BrokenFamily(FakeFamily):
        def Metric(self, labels, buckets=None):  # noqa: N802
            return Broken(labels, buckets)

    stats = BatchStats()
    model_metrics = metrics.ModelMetrics(
        "m", stats, pb=SimpleNamespace(MetricFamily=BrokenFamily), flush_seconds=0
    )
    stats.rows += 1
    model_metrics.record(stats)  # must not raise into execute()
    assert "metric update failed" in caplog.text
