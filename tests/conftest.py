"""Shared fixtures: the tiny checkpoint (built on demand) and its tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY_EMBEDDING = REPO / "models" / "qwen3-vl-embedding-tiny"
TINY_RERANKER = REPO / "models" / "qwen3-vl-reranker-tiny"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    from tools.checkpoint import build_tiny_checkpoint

    return build_tiny_checkpoint(TINY_EMBEDDING, kind="embedding")


@pytest.fixture(scope="session")
def tiny_reranker_path() -> Path:
    from tools.checkpoint import build_tiny_checkpoint

    return build_tiny_checkpoint(TINY_RERANKER, kind="reranker")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)
