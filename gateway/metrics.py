"""The gateway's Prometheus metrics (one registry per app, so that several apps in one process do not
collide): requests and errors by route and status, latency, in-flight and waiting requests, tokens."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from gateway.admission import Admission

# Rows per Triton call: 1 up to the ensembles' max_batch_size (64).
CALL_ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
# From a tiny text request (~5 ms) to a long video (minutes).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class GatewayMetrics:
    def __init__(self, admission: Admission):
        self.registry = CollectorRegistry()
        self._answered: dict[tuple[str, int], Counter] = {}
        self._latency: dict[str, Histogram] = {}
        self.requests = Counter(
            "gateway_requests",
            "HTTP requests answered, by route and status code",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds",
            "Time from the request's arrival to its answer",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "gateway_prompt_tokens", "Tokens the model ran for, by route", ["route"], registry=self.registry
        )
        self.triton_refusals = Counter(
            "gateway_triton_queue_refusals",
            "Requests Triton's queue refused (full or timed out) that the gateway sent again",
            registry=self.registry,
        )
        self.triton_call_rows = Histogram(
            "gateway_triton_call_rows",
            "Rows per Triton call, by ensemble (above 1 for one-item requests: they were merged)",
            ["model"],
            buckets=CALL_ROWS_BUCKETS,
            registry=self.registry,
        )
        self._call_rows: dict[str, Histogram] = {}
        self.http_in_flight = Gauge(
            "gateway_http_requests_in_progress", "HTTP requests being handled", registry=self.registry
        )
        in_flight = Gauge(
            "gateway_triton_requests_in_flight",
            "Requests admitted and sent to Triton",
            registry=self.registry,
        )
        in_flight.set_function(lambda: admission.in_flight)
        limit = Gauge(
            "gateway_triton_in_flight_limit",
            "The current bound on requests at Triton",
            registry=self.registry,
        )
        limit.set_function(admission.limit)
        waiting = Gauge(
            "gateway_requests_waiting", "Requests waiting for an in-flight slot", registry=self.registry
        )
        waiting.set_function(lambda: admission.waiting)
        self.registry.register(_AdmissionCollector(admission))

    def answered(self, route: str, status: int, seconds: float) -> None:
        """One HTTP request answered. The labelled children are looked up once per route and status
        (``labels()`` locks and builds its key on every call)."""
        key = (route, status)
        counter = self._answered.get(key)
        if counter is None:
            counter = self._answered[key] = self.requests.labels(route, str(status))
        latency = self._latency.get(route)
        if latency is None:
            latency = self._latency[route] = self.latency.labels(route)
        counter.inc()
        latency.observe(seconds)

    def observe_call(self, model: str, rows: int) -> None:
        """One Triton call of ``rows`` rows to ``model``."""
        histogram = self._call_rows.get(model)
        if histogram is None:
            histogram = self._call_rows[model] = self.triton_call_rows.labels(model)
        histogram.observe(rows)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _AdmissionCollector:
    """Admission's own counts, read at scrape time: requests refused for overload, and (with a latency target)
    the unloaded call latency the in-flight bound aims at a multiple of."""

    def __init__(self, admission: Admission):
        self.admission = admission

    def collect(self):
        yield CounterMetricFamily(
            "gateway_overload_shed",
            "Requests refused (503) because requests kept arriving faster than they completed",
            value=self.admission.shed_overload,
        )
        latency = self.admission.latency
        baseline = latency.baseline() if latency is not None else None
        if baseline is not None:
            yield GaugeMetricFamily(
                "gateway_triton_unloaded_latency_seconds",
                "Median latency of recent Triton calls that ran alone (the latency target's reference)",
                value=baseline,
            )
