"""The body of both preprocess steps' Triton stubs (model_repository/qwen3_vl_*_preprocess/1/model.py):
each names its preprocessor, settings class, model-path variable, inputs and the inputs that tell a
request's modalities; reading, the queue gate (backend.backpressure) and metrics are the same for both.
No torch here: the preprocess steps run on the CPU image's plain Python.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from backend import backpressure, metrics, triton_io
from backend.settings import PreprocessSettings, load_settings
from backend.steps import Preprocessor, preprocess_requests


class PreprocessStepStub:
    """Triton's TritonPythonModel for a preprocess step, once the subclass sets its class attributes."""

    preprocessor_class: ClassVar[type]  # called with the settings; a backend.steps.Preprocessor
    settings_class: ClassVar[type[PreprocessSettings]]
    environment: ClassVar[Mapping[str, str]]  # setting -> environment variable (backend.settings)
    input_names: ClassVar[Sequence[str]]
    modality_inputs: ClassVar[Mapping[str, Sequence[str]]] = metrics.MODALITY_INPUTS

    def initialize(self, args: dict[str, str]) -> None:
        triton_io.configure_logging(args["model_name"])
        settings = load_settings(self.settings_class, triton_io.model_parameters(args), self.environment)
        self.preprocessor: Preprocessor = self.preprocessor_class(settings)
        self.metrics = metrics.PreprocessMetrics(
            args["model_name"], self.preprocessor.timings, modality_inputs=self.modality_inputs
        )
        self.gate = backpressure.QueueGate(
            backpressure.channel_path(args["model_name"]),
            settings.max_model_queue,
            rate_smoothing=settings.service_rate_smoothing,
            watch_seconds=backpressure.WATCH_SECONDS,
        )
        triton_io.freeze_loaded_objects()

    def execute(self, requests: list) -> list:
        inputs = [triton_io.read_inputs(request, self.input_names) for request in requests]
        results = preprocess_requests(self.preprocessor, inputs, self.gate)
        self.metrics.record(inputs, results, self.preprocessor.timings)
        return [triton_io.to_response(result) for result in results]

    def finalize(self) -> None:
        self.metrics.close()
        self.gate.close()
