"""Triton adapter for the reranker model step; all logic lives in backend.reranking.model."""

from backend import metrics, triton_io
from backend.protocol import MODEL_INPUTS
from backend.reranking.model import RerankModel, rerank_requests
from backend.settings import RERANKER_ENV, RerankModelSettings, load_settings


class TritonPythonModel:
    def initialize(self, args):
        triton_io.configure_logging(args["model_name"])
        settings = load_settings(RerankModelSettings, triton_io.model_parameters(args), RERANKER_ENV)
        self.model = RerankModel(settings, *triton_io.instance_placement(args))
        if settings.warmup:
            self.model.warmup()
        self.metrics = metrics.ModelMetrics(args["model_name"], self.model.stats)

    def execute(self, requests):
        inputs = [triton_io.read_inputs(request, MODEL_INPUTS) for request in requests]
        results = rerank_requests(self.model, inputs)
        self.metrics.record(self.model.stats)
        return [triton_io.to_response(result) for result in results]

    def finalize(self):
        self.metrics.close()
