"""Triton adapter for the embedding preprocess step (no torch); all logic lives in backend.embedding."""

from backend import backpressure, metrics, triton_io
from backend.embedding.preprocess import EmbeddingPreprocessor
from backend.protocol import EMBEDDING_INPUTS
from backend.settings import EMBEDDING_ENV, PreprocessSettings, load_settings
from backend.steps import preprocess_requests


class TritonPythonModel:
    def initialize(self, args):
        triton_io.configure_logging(args["model_name"])
        settings = load_settings(
            PreprocessSettings, triton_io.model_parameters(args), {"model_path": EMBEDDING_ENV["model_path"]}
        )
        self.preprocessor = EmbeddingPreprocessor(settings)
        self.metrics = metrics.PreprocessMetrics(args["model_name"], self.preprocessor.timings)
        channel = backpressure.channel_path(args["model_name"])
        self.gate = backpressure.QueueGate(
            channel,
            settings.max_model_queue,
            rate_smoothing=settings.service_rate_smoothing,
            watch_seconds=backpressure.WATCH_SECONDS,
        )
        triton_io.freeze_loaded_objects()

    def execute(self, requests):
        inputs = [triton_io.read_inputs(request, EMBEDDING_INPUTS) for request in requests]
        results = preprocess_requests(self.preprocessor, inputs, self.gate)
        self.metrics.record(inputs, results, self.preprocessor.timings)
        return [triton_io.to_response(result) for result in results]

    def finalize(self):
        self.metrics.close()
        self.gate.close()
