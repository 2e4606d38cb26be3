"""Triton adapter for the embedding preprocess step (no torch); all logic lives in backend.embedding."""

from backend.embedding.preprocess import EmbeddingPreprocessor
from backend.preprocess_stub import PreprocessStepStub
from backend.protocol import EMBEDDING_INPUTS
from backend.settings import EMBEDDING_ENV, PreprocessSettings


class TritonPythonModel(PreprocessStepStub):
    preprocessor_class, settings_class = EmbeddingPreprocessor, PreprocessSettings
    environment, input_names = {"model_path": EMBEDDING_ENV["model_path"]}, EMBEDDING_INPUTS
