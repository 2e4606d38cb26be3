"""The index's vector database: Milvus, embedded (Milvus Lite, a file in the index directory) by default, or a
Milvus cluster by URI. The same ``pymilvus`` client, schema and queries serve both, so an index built on a
laptop and one built by a Kubernetes job into a cluster are searched alike.

One collection holds one index: a row per item, keyed by the item's id, with its content hash, modality,
source path, token count and its vector as float32 (quantized types are stored dequantized, so every type is
searched by inner product). The Parquet shards stay the record of what is done; the database follows them:
each committed chunk is upserted, and every run first reconciles the worker's rows with its shards (rows a
killed run did not upsert are added, rows whose id left the source or whose content changed are replaced or
deleted). Workers of one split each write their own Lite file, or their own ``shard`` rows of one cluster
collection.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from qwen3vl_client.bulk.store import Rows

DEFAULT_COLLECTION = "qwen3vl_index"
DEFAULT_PORT = 19530
NO_DATABASE = "none"
MAX_TEXT = 65535  # Milvus's longest VARCHAR
_COLLECTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
_LITE_FILE = re.compile(r"^milvus(\.\d+-of-\d+)?\.db$")
UPSERT_ROWS = 256  # rows per upsert request


class DatabaseError(OSError):
    """The database cannot be reached or does not hold what the index needs (another width)."""


def lite_file(directory: Path, tag: str) -> Path:
    """The worker's embedded database file in the index directory."""
    return directory / f"milvus{tag}.db"


def resolve_uri(uri: str | None, directory: Path, tag: str) -> str | None:
    """What ``--db-uri`` names, as pymilvus takes it: None (the default) is the worker's Milvus Lite file in
    ``directory``; ``none`` is no database (shards only); ``http(s)://host[:port]`` (port 19530 when left out)
    is a Milvus server or cluster; a path ending in ``.db`` is a Milvus Lite file elsewhere. Anything else
    raises ``ValueError``."""
    if uri is None or uri == "":
        return str(lite_file(directory, tag).resolve())
    if uri == NO_DATABASE:
        return None
    if uri.endswith(".db") and "://" not in uri:
        return str(Path(uri).resolve())
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"--db-uri takes http(s)://HOST[:PORT] (a Milvus server), a FILE.db (Milvus Lite) or "
            f"'{NO_DATABASE}', got {uri!r}"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"--db-uri: a Milvus server URI has no path or query, got {uri!r}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as error:
        raise ValueError(f"--db-uri: bad port in {uri!r}") from error
    return f"{parts.scheme}://{parts.hostname}:{port}"


def check_collection(name: str) -> str:
    if not _COLLECTION_NAME.match(name):
        raise ValueError(
            f"--db-collection: letters, digits and underscores, not starting with a digit; got {name!r}"
        )
    return name


@dataclass(frozen=True)
class Hit:
    """One search result: the item's id, its score (inner product with the query: cosine for float types),
    modality, the file that shows it (None for text given inline or media given as bytes) and its hash."""

    id: str
    score: float
    modality: str
    path: str | None
    content_hash: str


def _milvus() -> Any:
    try:
        import pymilvus
    except ImportError as error:  # pragma: no cover - pymilvus is in the project's requirements
        raise DatabaseError(
            "the vector database needs pymilvus and milvus-lite (pip install pymilvus milvus-lite)"
        ) from error
    return pymilvus


class VectorDatabase:
    """One index's collection in Milvus (Lite or a server), opened by URI."""

    def __init__(
        self,
        uri: str,
        collection: str = DEFAULT_COLLECTION,
        token: str | None = None,
        timeout: float = 10.0,
        busy_wait: float = 0.0,
    ):
        """``busy_wait``: how long to keep trying a Milvus Lite file that another process has open (one
        process at a time: a search holds it for a moment, a running job for its whole run)."""
        pymilvus = _milvus()
        self.uri = uri
        self.collection = collection
        self._types = pymilvus.DataType
        deadline = time.monotonic() + busy_wait
        while True:
            try:
                if uri.startswith(("http://", "https://")):
                    self.client = pymilvus.MilvusClient(uri=uri, token=token or "", timeout=timeout)
                else:
                    Path(uri).parent.mkdir(parents=True, exist_ok=True)
                    self.client = pymilvus.MilvusClient(uri=uri)
                break
            except pymilvus.exceptions.MilvusException as error:
                local = not uri.startswith(("http://", "https://"))
                if local and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                reason = _reason(error)
                if local:
                    reason += " (another process may have it open: a Milvus Lite file serves one at a time)"
                raise DatabaseError(f"cannot reach the vector database at {uri}: {reason}") from error
        self._error = pymilvus.exceptions.MilvusException
        self._loaded = False

    def close(self) -> None:
        self.client.close()
        if not self.uri.startswith(("http://", "https://")):
            # Milvus Lite serves the file from a server inside this process, which holds the file's lock
            # until it is stopped: stop it, so that another process (a job, a search page) can open it.
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.uri)

    def __enter__(self) -> VectorDatabase:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def exists(self) -> bool:
        """Whether the collection is there; it is then loaded (Milvus answers queries and searches only on
        a loaded collection, and one written by another process, or before a restart, is not)."""
        if self._loaded:
            return True
        if not self.client.has_collection(self.collection):
            return False
        self.client.load_collection(self.collection)
        self._loaded = True
        return True

    def width(self) -> int | None:
        """The collection's vector width (None when there is no collection yet)."""
        if not self.exists():
            return None
        fields = self.client.describe_collection(self.collection)["fields"]
        return next(int(field["params"]["dim"]) for field in fields if field["name"] == "vector")

    def ensure(self, width: int) -> None:
        """Create the collection for ``width``-wide vectors, or check that the one there has that width."""
        have = self.width()
        if have is not None:
            if have != width:
                raise DatabaseError(
                    f"collection {self.collection!r} at {self.uri} holds {have}-wide vectors, not {width}: "
                    "use another --db-collection"
                )
            return
        types = self._types
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", types.VARCHAR, is_primary=True, max_length=MAX_TEXT)
        schema.add_field("content_hash", types.VARCHAR, max_length=64)
        schema.add_field("modality", types.VARCHAR, max_length=64)
        schema.add_field("path", types.VARCHAR, max_length=MAX_TEXT)
        schema.add_field("shard", types.VARCHAR, max_length=32)  # "i/N": the worker that owns the row
        schema.add_field("token_count", types.INT32)
        schema.add_field("vector", types.FLOAT_VECTOR, dim=width)
        index = self.client.prepare_index_params()
        index.add_index("vector", index_type="AUTOINDEX", metric_type="IP")
        self.client.create_collection(self.collection, schema=schema, index_params=index)
        self._loaded = True  # a collection created with its index is loaded

    def upsert(self, rows: Iterable[dict[str, Any]]) -> int:
        batch: list[dict[str, Any]] = []
        count = 0
        for row in rows:
            batch.append(row)
            if len(batch) >= UPSERT_ROWS:
                count += self._upsert(batch)
                batch = []
        if batch:
            count += self._upsert(batch)
        return count

    def _upsert(self, batch: list[dict[str, Any]]) -> int:
        try:
            self.client.upsert(self.collection, batch)
        except self._error as error:
            raise DatabaseError(f"upsert into {self.collection!r} at {self.uri}: {_reason(error)}") from error
        return len(batch)

    def delete(self, ids: list[str]) -> None:
        for start in range(0, len(ids), UPSERT_ROWS):
            self.client.delete(self.collection, ids=ids[start : start + UPSERT_ROWS])

    def keys(self, shard: str) -> dict[str, str]:
        """id -> content hash of the rows worker ``shard`` ("i/N") owns."""
        found: dict[str, str] = {}
        if not self.exists():
            return found
        if not self.uri.startswith(("http://", "https://")):
            # Milvus Lite answers a whole query at once (its iterator needs a server's timestamps).
            rows = self.client.query(
                self.collection, filter=f'shard == "{shard}"', output_fields=["content_hash"]
            )
            return {str(row["id"]): str(row["content_hash"]) for row in rows}
        iterator = self.client.query_iterator(
            self.collection, batch_size=1000, filter=f'shard == "{shard}"', output_fields=["content_hash"]
        )
        try:
            while rows := iterator.next():
                found.update((str(row["id"]), str(row["content_hash"])) for row in rows)
        finally:
            iterator.close()
        return found

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """The ``k`` nearest rows of each query vector (inner product), best first."""
        if not self.exists():
            return [[] for _ in queries]
        answers = self.client.search(
            self.collection,
            [np.asarray(query, dtype=np.float32).tolist() for query in queries],
            limit=k,
            output_fields=["modality", "path", "content_hash"],
            search_params={"metric_type": "IP"},
        )
        return [
            [
                Hit(
                    str(hit["id"]),
                    float(hit["distance"]),
                    str(hit["entity"]["modality"]),
                    str(hit["entity"]["path"]) or None,
                    str(hit["entity"]["content_hash"]),
                )
                for hit in answer
            ]
            for answer in answers
        ]


def _reason(error: BaseException) -> str:
    return str(getattr(error, "message", "") or error)


def row_documents(
    ids: list[str],
    hashes: list[str],
    modalities: list[str],
    paths: list[str | None],
    token_counts: np.ndarray,
    vectors: np.ndarray,
    shard: str,
) -> Iterator[dict[str, Any]]:
    """The database rows of a shard's rows (``vectors`` already float32)."""
    for row, identifier in enumerate(ids):
        yield {
            "id": identifier,
            "content_hash": hashes[row],
            "modality": modalities[row],
            "path": paths[row] or "",
            "shard": shard,
            "token_count": int(token_counts[row]),
            "vector": vectors[row].astype(np.float32).tolist(),
        }


def lite_files(directory: Path) -> list[Path]:
    """Every worker's embedded database file in an index directory."""
    return (
        sorted(path for path in directory.iterdir() if _LITE_FILE.match(path.name))
        if directory.is_dir()
        else []
    )


class Mirror:
    """Keeps one worker's rows of the database equal to its committed shards.

    ``paths`` maps ids to the file that shows each item (for search results). The vectors go in dequantized
    (``settings``: the index's dtype, width and int8 range)."""

    def __init__(self, database: VectorDatabase, shard: tuple[int, int], paths: dict[str, str | None]):
        self.database = database
        self.shard = f"{shard[0]}/{shard[1]}"
        self.paths = paths
        self.upserted = 0
        self.deleted = 0

    def _documents(
        self, rows: Rows, settings: dict[str, Any], chosen: Iterable[int]
    ) -> Iterator[dict[str, Any]]:
        from qwen3vl_client.bulk.quantize import dequantize

        picked = list(chosen)
        if not picked:
            return iter(())
        vectors = dequantize(rows.vectors[picked], rows.dtype, int(settings["width"]), settings.get("range"))
        return row_documents(
            [rows.ids[i] for i in picked],
            [rows.hashes[i] for i in picked],
            [rows.modalities[i] for i in picked],
            [self.paths.get(rows.ids[i]) for i in picked],
            rows.token_counts[picked],
            vectors,
            self.shard,
        )

    def add(self, rows: Rows, settings: dict[str, Any]) -> None:
        """A newly committed chunk."""
        self.database.ensure(int(settings["width"]))
        self.upserted += self.database.upsert(self._documents(rows, settings, range(len(rows))))

    def reconcile(self, shards: Iterable[Rows], settings: dict[str, Any]) -> None:
        """Upsert the committed rows the database lacks (or holds with another hash); delete the worker's
        rows no shard holds."""
        width = settings.get("width")
        if not width:
            if self.database.exists():
                self.database.delete(list(self.database.keys(self.shard)))
            return
        self.database.ensure(int(width))
        held = self.database.keys(self.shard)
        committed: set[str] = set()
        for rows in shards:
            committed.update(rows.ids)
            missing = [
                row for row, identifier in enumerate(rows.ids) if held.get(identifier) != rows.hashes[row]
            ]
            self.upserted += self.database.upsert(self._documents(rows, settings, missing))
        extra = [identifier for identifier in held if identifier not in committed]
        self.database.delete(extra)
        self.deleted += len(extra)
