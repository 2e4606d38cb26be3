"""The body of both model steps' Triton stubs (model_repository/qwen3_vl_*_model/1/model.py): each names
its model class, settings class and environment variables; loading, the worker, metrics and backpressure
are the same for both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from backend import backpressure, metrics, triton_io
from backend.media.memory import fix_mmap_threshold
from backend.runtime.worker import StepWorker
from backend.settings import ModelSettings, load_settings

if TYPE_CHECKING:
    from backend.runtime.backbone import BackboneRunner


class ModelStepStub:
    """Triton's TritonPythonModel for a model step, once the subclass sets the three class attributes."""

    model_class: ClassVar[type[BackboneRunner]]
    settings_class: ClassVar[type[ModelSettings]]
    environment: ClassVar[Mapping[str, str]]  # setting -> environment variable (backend.settings)

    def initialize(self, args: dict[str, str]) -> None:
        triton_io.configure_logging(args["model_name"])
        # Before anything is loaded: a tensor of every new shape must not grow the heaps (the RSS, in steps).
        fix_mmap_threshold()
        settings = load_settings(self.settings_class, triton_io.model_parameters(args), self.environment)
        self.model = self.model_class(settings, *triton_io.instance_placement(args))
        if settings.warmup:
            self.model.warmup()
        self.metrics = metrics.ModelMetrics(args["model_name"], self.model.stats)
        self.worker = StepWorker(
            self.model,
            self.model.platform.enter_thread,
            lambda: self.metrics.record(self.model.stats),
            backpressure.Publisher(backpressure.channel_path(args["model_name"])),
            settings.bulk_share,
            settings.bulk_backlog_tokens,
            settings.expected_wait_share,
            lanes=self.model.lanes,
        )
        triton_io.freeze_loaded_objects()

    def execute(self, requests: list) -> list:
        # Queued for the worker thread, cheap interactive ones first (backend.runtime.worker). What is done
        # by the time execute() returns is returned; the rest is answered through each request's response
        # sender as soon as its rows are done. execute() returns once the backlog is at most one token budget.
        results = self.worker.submit(
            [
                (triton_io.read_inputs(request, self.model.input_names), *triton_io.answer_later(request))
                for request in requests
            ],
            [triton_io.is_bulk(request) for request in requests],
        )
        return triton_io.returned_responses(results)

    def finalize(self) -> None:
        self.worker.close()
        self.metrics.close()
