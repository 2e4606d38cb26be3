"""Triton adapter for the embedding model step; all logic lives in backend.embedding.model."""

from backend.embedding.model import EmbeddingModel
from backend.runtime.stub import ModelStepStub
from backend.settings import EMBEDDING_ENV, ModelSettings


class TritonPythonModel(ModelStepStub):
    model_class, settings_class, environment = EmbeddingModel, ModelSettings, EMBEDDING_ENV
