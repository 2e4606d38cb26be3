"""Triton adapter for the embedding model step; all logic lives in backend.embedding.model."""

from backend import metrics, triton_io
from backend.embedding.model import EmbeddingModel, embed_requests
from backend.protocol import MODEL_INPUTS
from backend.settings import EMBEDDING_ENV, ModelSettings, load_settings


class TritonPythonModel:
    def initialize(self, args):
        triton_io.configure_logging(args["model_name"])
        settings = load_settings(ModelSettings, triton_io.model_parameters(args), EMBEDDING_ENV)
        self.model = EmbeddingModel(settings, *triton_io.instance_placement(args))
        if settings.warmup:
            self.model.warmup()
        self.metrics = metrics.ModelMetrics(args["model_name"], self.model.stats)

    def execute(self, requests):
        inputs = [triton_io.read_inputs(request, MODEL_INPUTS) for request in requests]
        results = embed_requests(self.model, inputs)
        self.metrics.record(self.model.stats)
        return [triton_io.to_response(result) for result in results]

    def finalize(self):
        self.metrics.close()
