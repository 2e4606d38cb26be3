"""Triton adapter for the reranker preprocess step (no torch); all logic lives in backend.reranking."""

from backend import backpressure, metrics, triton_io
from backend.protocol import RERANK_INPUTS
from backend.reranking.preprocess import RerankPreprocessor
from backend.settings import RERANKER_ENV, RerankPreprocessSettings, load_settings
from backend.steps import preprocess_requests


class TritonPythonModel:
    def initialize(self, args):
        triton_io.configure_logging(args["model_name"])
        parameters = triton_io.model_parameters(args)
        overrides = {"model_path": RERANKER_ENV["model_path"]}
        settings = load_settings(RerankPreprocessSettings, parameters, overrides)
        self.preprocessor = RerankPreprocessor(settings)
        self.metrics = metrics.PreprocessMetrics(
            args["model_name"], self.preprocessor.timings, modality_inputs=metrics.RERANK_MODALITY_INPUTS
        )
        channel = backpressure.channel_path(args["model_name"])
        self.gate = backpressure.QueueGate(
            channel,
            settings.max_model_queue,
            rate_smoothing=settings.service_rate_smoothing,
            watch_seconds=backpressure.WATCH_SECONDS,
        )
        triton_io.freeze_loaded_objects()

    def execute(self, requests):
        inputs = [triton_io.read_inputs(request, RERANK_INPUTS) for request in requests]
        results = preprocess_requests(self.preprocessor, inputs, self.gate)
        self.metrics.record(inputs, results, self.preprocessor.timings)
        return [triton_io.to_response(result) for result in results]

    def finalize(self):
        self.metrics.close()
        self.gate.close()
