"""Triton adapter for the embedding model step; all logic lives in backend.modeling / backend.service."""

from backend import triton_io
from backend.modeling import EmbeddingModel
from backend.service import MODEL_INPUTS, embed_requests
from backend.settings import EMBEDDING_ENV, ModelSettings, load_settings


class TritonPythonModel:
    def initialize(self, args):
        triton_io.configure_logging(args["model_name"])
        settings = load_settings(ModelSettings, triton_io.model_parameters(args), EMBEDDING_ENV)
        self.model = EmbeddingModel(settings, *triton_io.instance_placement(args))
        if settings.warmup:
            self.model.warmup()

    def execute(self, requests):
        inputs = [triton_io.read_inputs(request, MODEL_INPUTS) for request in requests]
        return [triton_io.to_response(result) for result in embed_requests(self.model, inputs)]
