"""Triton adapter for the reranker model step; all logic lives in backend.reranking.model."""

from backend.reranking.model import RerankModel
from backend.runtime.stub import ModelStepStub
from backend.settings import RERANKER_ENV, RerankModelSettings


class TritonPythonModel(ModelStepStub):
    model_class, settings_class, environment = RerankModel, RerankModelSettings, RERANKER_ENV
