"""The names clients may put in ``model``. By default, what ``vllm serve <weights>`` would answer to for the
weights Triton runs (its Hugging Face id, or its directory's name), so that code written for vLLM keeps its
``model`` field; the Triton ensemble's name is accepted too. SERVED_MODEL_NAME / SERVED_RERANKER_MODEL_NAME
set them instead."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from gateway.errors import GatewayError, Kind
from gateway.settings import DEFAULT_RERANKER_PATH, DEFAULT_TOKENIZER_PATH, GatewaySettings
from gateway.triton import TritonBackend

# A snapshot in the Hugging Face cache: .../models--Qwen--Qwen3-VL-Embedding-8B/snapshots/<revision>
_HF_CACHE = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/[^/]+\Z")
_HF_ID = re.compile(r"\A[\w.-]+/[\w.-]+\Z")
# Qwen's own checkpoints, wherever they were copied: `Qwen/<directory>` is what a vLLM user's code sends.
_QWEN_CHECKPOINT = re.compile(r"\AQwen3-VL-(Embedding|Reranker)-")


def names_for_weights(path: str) -> tuple[str, ...]:
    """The names vLLM users would send for the weights at ``path`` (an HF id or a directory), the one to
    report first: the HF id, or the directory's name; then the path as given (vLLM's own default)."""
    path = path.rstrip("/") or path
    names: list[str] = []
    cached = _HF_CACHE.search(path)
    if cached:
        names.append(f"{cached['org']}/{cached['name']}")
    elif _HF_ID.match(path) and not Path(path).is_dir():
        names.append(path)  # a Hugging Face id, downloaded by the backend
    base = (cached["name"] if cached else None) or Path(path).name
    names += [base, path]
    if _QWEN_CHECKPOINT.match(base):
        names.append(f"Qwen/{base}")
    return tuple(dict.fromkeys(name for name in names if name))


class ServedNames:
    """Resolves each ensemble's names once Triton has said which weights it runs."""

    def __init__(self, settings: GatewaySettings, backend: TritonBackend):
        self.settings = settings
        self.backend = backend
        self._resolved: dict[str, tuple[str, ...]] = {}

    def _configured(self, model: str) -> tuple[str, ...] | None:
        if model == self.settings.embedding_model:
            return self.settings.served_model_names
        return self.settings.served_reranker_names

    def _local_path(self, model: str) -> str:
        """The weights when Triton reports no model_path: the gateway's own MODEL_PATH (the launcher
        hands both the same environment), else the backend's default checkpoint."""
        if model == self.settings.embedding_model:
            return self.settings.tokenizer_path or str(DEFAULT_TOKENIZER_PATH)
        return self.settings.reranker_path or str(DEFAULT_RERANKER_PATH)

    async def of(self, model: str) -> tuple[str, ...]:
        """``model``'s names, the reported one first, its ensemble name last."""
        if model in self._resolved:
            return self._resolved[model]
        names = self._configured(model)
        final = True
        if names is None:
            try:
                path = (await self.backend.info(model)).model_path or self._local_path(model)
            except GatewayError:
                path, final = self._local_path(model), False  # Triton not up yet: ask again next time
            names = names_for_weights(path)
        names = tuple(dict.fromkeys((*names, model)))
        if final:
            self._resolved[model] = names
        return names

    async def listed(self, model: str) -> tuple[str, ...]:
        """The names /v1/models lists: the configured ones, or the reported one; and the ensemble name
        (the other names the weights go by are accepted, not listed)."""
        names = await self.of(model)
        if self._configured(model) is None:
            names = tuple(dict.fromkeys((names[0], model)))
        return names

    async def check(self, requested: str | None, models: Sequence[str]) -> str:
        """The name to report for a request that names ``requested`` (None = the first model's first
        name); a name none of ``models`` answers to is a 404 that lists the served names."""
        served = [await self.of(model) for model in models]
        if requested is None:
            return served[0][0]
        if any(requested in names for names in served):
            return requested
        listed = ", ".join(f"`{name}`" for names in served for name in names)
        raise GatewayError(
            Kind.NOT_FOUND,
            f"The model `{requested}` does not exist. This server answers to {listed} "
            "(set SERVED_MODEL_NAME / SERVED_RERANKER_MODEL_NAME to serve other names).",
            param="model",
        )
