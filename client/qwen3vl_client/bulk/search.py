"""Searching an index directory built by ``qwen3vl index``: ``search(index_dir, query, k)``.

The query (a vector, or a text / ``Item`` embedded with the search instruction) is cut to the index's
width and normalised, then looked up in the vector database(s) the workers' manifests name (Milvus Lite
files in the directory, or a Milvus server); an index written with ``--db-uri none`` is searched by brute
force over its Parquet shards.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qwen3vl_client.bulk.quantize import cut_normalise, dequantize
from qwen3vl_client.bulk.store import StoreError, read_index, worker_stores
from qwen3vl_client.bulk.vectordb import DatabaseError, Hit, VectorDatabase
from qwen3vl_client.items import Item

if TYPE_CHECKING:
    from qwen3vl_client.client import EmbeddingClient

MAX_HITS = 16384  # Milvus's largest result window
SEARCH_TASK = "Retrieve images, videos or passages relevant to the user's query"

__all__ = ["SEARCH_TASK", "Hit", "is_index", "search", "search_vectors"]


def is_index(directory: Path) -> bool:
    """Whether ``directory`` was written by ``qwen3vl index`` (holds a worker's manifest)."""
    return bool(worker_stores(directory))


def _manifests(directory: Path) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The index's settings and the distinct databases its workers wrote to."""
    settings: dict[str, Any] = {}
    databases: list[dict[str, str]] = []
    for store in worker_stores(directory):
        manifest = store.open({}, create=False)
        if manifest is None:
            continue
        settings = settings or manifest.settings
        if manifest.database and manifest.database not in databases:
            databases.append(manifest.database)
    if not settings:
        raise StoreError(
            f"{directory}: not an index (no manifest*.json): run `qwen3vl index SOURCE --out DIR`"
        )
    return settings, databases


def search_vectors(
    index_dir: Path, queries: np.ndarray, k: int = 10, token: str | None = None
) -> list[list[Hit]]:
    """The ``k`` best items of the index for each query vector (rows), best first."""
    settings, databases = _manifests(index_dir)
    width = int(settings.get("width") or 0)
    matrix = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    if not width:
        return [[] for _ in matrix]
    matrix = cut_normalise(matrix[:, :width])
    if not databases:
        return _brute_force(index_dir, matrix, k, settings)
    merged: list[list[Hit]] = [[] for _ in matrix]
    for database in databases:
        uri = database["uri"]
        local = "://" not in uri
        if local and not Path(uri).is_absolute():
            uri = str((index_dir / uri).resolve())  # a Milvus Lite file in the index directory
        try:
            opened = VectorDatabase(uri, database["collection"], token, busy_wait=1.0 if local else 0.0)
        except DatabaseError:
            if not local:
                raise
            # A running job holds its worker's Lite file: the committed shards answer instead (exact).
            return _brute_force(index_dir, matrix, k, settings)
        with opened:
            # More than k, so that ties at the cut are broken by id alike however the index is split.
            for row, hits in enumerate(opened.search(matrix, min(2 * k + 8, MAX_HITS))):
                merged[row] += hits
    return [sorted(hits, key=lambda hit: (-hit.score, hit.id))[:k] for hits in merged]


def _brute_force(index_dir: Path, queries: np.ndarray, k: int, settings: dict[str, Any]) -> list[list[Hit]]:
    """Exact search over the committed shards (ids sorted, so ties go by id as in the database search;
    paths only for a folder source, whose ids are its files' paths)."""
    index = read_index(index_dir)
    source = _folder_source(index_dir)
    if not index.ids:
        return [[] for _ in queries]
    vectors = dequantize(index.vectors, str(settings["dtype"]), int(settings["width"]), settings.get("range"))
    scores = queries @ vectors.T
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [
        [
            Hit(
                index.ids[i],
                float(scores[row, i]),
                index.modalities[i],
                None if source is None else str(source / index.ids[i]),
                index.hashes[i],
            )
            for i in columns
        ]
        for row, columns in enumerate(best)
    ]


def _folder_source(index_dir: Path) -> Path | None:
    for store in worker_stores(index_dir):
        manifest = store.open({}, create=False)
        if manifest is not None and manifest.source and Path(manifest.source).is_dir():
            return Path(manifest.source)
    return None


def search(
    index_dir: Path,
    query: np.ndarray | str | Item,
    k: int = 10,
    client: EmbeddingClient | None = None,
    task: str = SEARCH_TASK,
    token: str | None = None,
) -> list[Hit]:
    """The ``k`` items of the index nearest to ``query``, best first: each ``Hit`` has ``id``, ``score``,
    ``modality``, ``path`` (the file that shows it, None for inline text) and ``content_hash``.

    ``query`` is a vector (the model's, any width: it is cut to the index's and normalised) or a text or
    ``Item`` (an image query), embedded by ``client`` with ``task`` as its instruction. ``token``: the
    Milvus server's, when the index lives in one that needs it."""
    if isinstance(query, np.ndarray):
        vector = query
    else:
        if client is None:
            raise ValueError("search(): a text or Item query needs an EmbeddingClient to embed it")
        settings, _ = _manifests(index_dir)
        item = Item(text=query) if isinstance(query, str) else query
        vector = client.embed_queries([item], task, dimensions=int(settings.get("dimensions") or 0) or None)[
            0
        ]
    return search_vectors(index_dir, vector[np.newaxis], k, token)[0]
