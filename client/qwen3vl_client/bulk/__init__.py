"""Bulk indexing: ``qwen3vl index SOURCE --out DIR`` embeds a folder or a table into resumable, shardable
vector shards (``job``, ``store``, ``sources``), with compact vector types (``quantize``)."""

from qwen3vl_client.bulk.quantize import VECTOR_TYPES, compact, cut_normalise, dequantize, quantize
from qwen3vl_client.bulk.store import Index, read_index

__all__ = ["VECTOR_TYPES", "Index", "compact", "cut_normalise", "dequantize", "quantize", "read_index"]
