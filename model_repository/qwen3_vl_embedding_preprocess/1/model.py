"""Triton adapter for the embedding preprocess step; all logic lives in backend.preprocess."""

from backend import metrics, triton_io
from backend.preprocess import EmbeddingPreprocessor
from backend.service import PREPROCESS_INPUTS, preprocess_requests
from backend.settings import EMBEDDING_ENV, PreprocessSettings, load_settings


class TritonPythonModel:
    def initialize(self, args):
        triton_io.configure_logging(args["model_name"])
        settings = load_settings(
            PreprocessSettings, triton_io.model_parameters(args), {"model_path": EMBEDDING_ENV["model_path"]}
        )
        self.preprocessor = EmbeddingPreprocessor(settings)
        self.metrics = metrics.PreprocessMetrics(args["model_name"], self.preprocessor.timings)

    def execute(self, requests):
        inputs = [triton_io.read_inputs(request, PREPROCESS_INPUTS) for request in requests]
        results = preprocess_requests(self.preprocessor, inputs)
        self.metrics.record(inputs, results, self.preprocessor.timings)
        return [triton_io.to_response(result) for result in results]

    def finalize(self):
        self.metrics.close()
