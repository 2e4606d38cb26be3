"""A small client for Qwen3-VL-Embedding served on Triton: text, images, screenshots, video, any mix.

from qwen3vl_client import EmbeddingClient, Item

with EmbeddingClient("localhost:9000") as client:  # the gateway; or ("localhost:8001", protocol="grpc")
    documents = client.embed(["The capital of China is Beijing.", Item(text="a cat", images=["cat.jpg"])])
    queries = client.embed_queries(["What is the capital of China?"])
    scores = queries @ documents.T
    ranked = client.rerank("What is the capital of China?", ["Gravity.", "Beijing is the capital."])
    ranked.top()  # [(1, 0.93...), (0, 0.02...)]: (document index, score), best first
"""

from qwen3vl_client.aio import AsyncEmbeddingClient
from qwen3vl_client.client import EmbeddingClient
from qwen3vl_client.errors import EmbeddingError, ItemError, RequestError, ServerUnavailableError
from qwen3vl_client.items import ImageInput, Item, VideoInput
from qwen3vl_client.options import DEFAULT_QUERY_TASK
from qwen3vl_client.results import EmbeddingResult, Health, ModelStatus, RerankResult, TensorSpec

__all__ = [
    "DEFAULT_QUERY_TASK",
    "AsyncEmbeddingClient",
    "EmbeddingClient",
    "EmbeddingError",
    "EmbeddingResult",
    "Health",
    "ImageInput",
    "Item",
    "ItemError",
    "ModelStatus",
    "RequestError",
    "RerankResult",
    "ServerUnavailableError",
    "TensorSpec",
    "VideoInput",
]
