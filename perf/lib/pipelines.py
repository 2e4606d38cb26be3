"""What perf measures: the two public ensembles with their composing models, and the checkpoints a server
can be started with (`tiny` / `bench`, built on demand, or a directory)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from backend.protocol import EMBEDDING_ENSEMBLE, RERANKER_ENSEMBLE
from perf.lib.console import log
from perf.lib.paths import REPO


@dataclass(frozen=True)
class Pipeline:
    """One public ensemble and its two composing models (preprocess step, torch model step)."""

    ensemble: str
    preprocess: str
    model_step: str
    kind: str  # embedding | reranker (tools.checkpoint's kind)
    model_env: str  # the environment variable naming its checkpoint
    nudge_inputs: tuple[str, ...]  # the BYTES [1] inputs of a short row that flushes the stubs' metrics

    @property
    def models(self) -> tuple[str, str, str]:
        return (self.ensemble, self.preprocess, self.model_step)


EMBEDDING = Pipeline(
    EMBEDDING_ENSEMBLE,
    f"{EMBEDDING_ENSEMBLE}_preprocess",
    f"{EMBEDDING_ENSEMBLE}_model",
    "embedding",
    "MODEL_PATH",
    ("TEXT",),
)
RERANKER = Pipeline(
    RERANKER_ENSEMBLE,
    f"{RERANKER_ENSEMBLE}_preprocess",
    f"{RERANKER_ENSEMBLE}_model",
    "reranker",
    "RERANKER_MODEL_PATH",
    ("QUERY_TEXT", "DOCUMENT_TEXT"),
)
PIPELINES = {pipeline.ensemble: pipeline for pipeline in (EMBEDDING, RERANKER)}
ALL_MODELS = tuple(name for pipeline in PIPELINES.values() for name in pipeline.models)
ENSEMBLE, PREPROCESS, MODEL_STEP = EMBEDDING.models
EMBEDDING_MODELS = EMBEDDING.models
NAMED_MODELS = {
    "tiny": REPO / "models" / "qwen3-vl-embedding-tiny",
    "bench": REPO / "models" / "qwen3-vl-embedding-bench",
}
NAMED_RERANKERS = {
    "tiny": REPO / "models" / "qwen3-vl-reranker-tiny",
    "bench": REPO / "models" / "qwen3-vl-reranker-bench",
}


def pipeline_of(ensemble: str | None) -> Pipeline:
    """The pipeline of an ensemble name (points written before `ensemble` existed measured the embedding
    ensemble)."""
    return PIPELINES.get(ensemble or ENSEMBLE, EMBEDDING)


def model_path(name: str, kind: str = "embedding") -> Path:
    """`tiny` / `bench` (built on demand, as `make setup` builds tiny) or a checkpoint directory. For the
    reranker (`kind="reranker"`) a checkpoint directory comes from RERANKER_MODEL_PATH."""
    named = NAMED_RERANKERS if kind == "reranker" else NAMED_MODELS
    if name not in named:
        path = Path(os.environ.get("RERANKER_MODEL_PATH", "") if kind == "reranker" else name)
        if not path.is_dir():
            where = "RERANKER_MODEL_PATH" if kind == "reranker" else f"model {name!r}"
            raise SystemExit(f"{where} is neither tiny, bench nor a checkpoint directory")
        return path
    path = named[name]
    from tools.checkpoint import build_tiny_checkpoint, is_complete_checkpoint

    if not is_complete_checkpoint(path):
        log(f"building the {name} {kind} checkpoint in {path} ...")
        build_tiny_checkpoint(path, kind=kind, size=name)
    return path
