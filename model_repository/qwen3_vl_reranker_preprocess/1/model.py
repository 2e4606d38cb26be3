"""Triton adapter for the reranker preprocess step (no torch); all logic lives in backend.reranking."""

from backend import metrics
from backend.preprocess_stub import PreprocessStepStub
from backend.protocol import RERANK_INPUTS
from backend.reranking.preprocess import RerankPreprocessor
from backend.settings import RERANKER_ENV, RerankPreprocessSettings


class TritonPythonModel(PreprocessStepStub):
    preprocessor_class, settings_class = RerankPreprocessor, RerankPreprocessSettings
    environment, input_names = {"model_path": RERANKER_ENV["model_path"]}, RERANK_INPUTS
    modality_inputs = metrics.RERANK_MODALITY_INPUTS
