"""The reranker model step: score = sigmoid(h_last · (W_lm[yes] − W_lm[no])).

Only the two LM-head rows are read (from the checkpoint, or from the input embeddings when they are tied),
so the full-vocabulary projection is never built or computed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from backend.errors import ConfigError
from backend.protocol import SCORE_OUTPUT, TOKEN_COUNT_OUTPUT, PreparedItem, token_counts
from backend.runtime.backbone import BackboneRunner
from backend.settings import ModelSettings

logger = logging.getLogger(__name__)

LM_HEAD_KEYS = ("lm_head.weight", "model.lm_head.weight")


def yes_no_token_ids(model_path: str) -> tuple[int, int]:
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(model_path, fix_mistral_regex=False).get_vocab()
    if "yes" not in vocab or "no" not in vocab:
        raise ConfigError(
            f"tokenizer at {model_path!r} has no 'yes'/'no' tokens; is this a Qwen3-VL reranker?"
        )
    return vocab["yes"], vocab["no"]


def _checkpoint_files(model_path: Path) -> list[Path]:
    index = model_path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_path / shard for shard in shards]
    return sorted(model_path.glob("*.safetensors"))


def read_lm_head_rows(model_path: str, token_ids: Sequence[int]) -> torch.Tensor | None:
    """Rows of an untied LM head, read straight from the safetensors files; None if there is no LM head."""
    from safetensors import safe_open

    for file in _checkpoint_files(Path(model_path)):
        with safe_open(str(file), framework="pt") as handle:
            for key in LM_HEAD_KEYS:
                if key in handle.keys():
                    weight = handle.get_slice(key)
                    return torch.stack([weight[token_id] for token_id in token_ids])
    return None


class RerankModel(BackboneRunner):
    """Qwen3-VL-Reranker: one relevance score in [0, 1] per (query, document) row."""

    def __init__(self, settings: ModelSettings, *placement: int | None):
        """`placement`: BackboneRunner's instance_index, triton_gpu_id, instance_count."""
        super().__init__(settings, *placement)  # type: ignore[arg-type]
        yes, no = yes_no_token_ids(settings.model_path)
        rows = read_lm_head_rows(settings.model_path, (yes, no))
        if rows is None:
            if not getattr(self.model.config, "tie_word_embeddings", False) and not getattr(
                self.model.config.text_config, "tie_word_embeddings", False
            ):
                raise ConfigError(f"{settings.model_path!r} has no lm_head weights and untied embeddings")
            rows = self.model.get_input_embeddings().weight[[yes, no]].detach()
        # Scores are computed in fp32 from the model's last hidden states.
        self.score_direction = (rows[0].float() - rows[1].float()).to(self.device)

    def row_outputs(self, hidden: torch.Tensor, rows: Sequence[PreparedItem]) -> list[np.ndarray]:
        scores = torch.sigmoid(hidden @ self.score_direction)
        return [np.array([score], dtype=np.float32) for score in scores.cpu().numpy()]

    def score(self, rows: Sequence[PreparedItem]) -> list[np.ndarray]:
        """float32 [1] per row, in row order."""
        return self.run(rows)

    def respond(self, rows: Sequence[PreparedItem], outputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        return score_output(rows, outputs)


def score_output(rows: Sequence[PreparedItem], scores: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    return {
        SCORE_OUTPUT: np.stack(scores).astype(np.float32).reshape(-1, 1),
        TOKEN_COUNT_OUTPUT: token_counts(rows),
    }
