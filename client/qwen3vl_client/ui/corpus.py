"""What the search page searches: an index directory opened read-only, with each row's source record (for
thumbnails, snippets and the reranker).

Two kinds of directory are understood: one written by ``qwen3vl index`` (manifests and vector shards, read
with ``bulk.read_index``) and the folder index of ``qwen3vl search`` (``index.json``, searched with
``FileIndex.search``, the function that command uses). Either is read again when its files change, so the
page sees what a running ``qwen3vl index`` job has committed so far.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qwen3vl_client.bulk import dequantize, read_index
from qwen3vl_client.bulk.sources import Record, SourceError, records
from qwen3vl_client.index import META_FILE, FileIndex


class CorpusError(ValueError):
    """The directory is no index this page can read, or the source cannot be listed."""


@dataclass(frozen=True)
class Hit:
    id: str
    modality: str
    score: float


@dataclass(frozen=True)
class Summary:
    kind: str  # "bulk" (qwen3vl index) or "folder" (qwen3vl search)
    items: int
    dimensions: int | None  # the Matryoshka size queries are embedded at; None: full
    model: str | None
    dtype: str
    source: str | None  # where the rows' files are; None: not known (ids only, no thumbnails)


@dataclass(frozen=True)
class _Loaded:
    ids: list[str]
    modalities: list[str]
    vectors: np.ndarray  # float32 [rows, width]
    summary: Summary


def _stamp(paths: list[Path]) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and modification times: changes whenever a writer renames a new file into place."""
    stamps = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            continue
        stamps.append((path.name, stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(stamps))


def _read_bulk(directory: Path, source: Path | None) -> _Loaded:
    index = read_index(directory)
    settings = index.settings
    dtype = str(settings.get("dtype", "float32"))
    width = int(settings.get("width") or (index.vectors.shape[1] if index.vectors.size else 0))
    vectors = (
        dequantize(index.vectors, dtype, width, settings.get("range"))
        if len(index.ids)
        else np.zeros((0, width), dtype=np.float32)
    )
    summary = Summary(
        "bulk",
        len(index.ids),
        int(settings.get("dimensions") or 0) or None,
        settings.get("model"),
        dtype,
        str(source) if source is not None else None,
    )
    return _Loaded(index.ids, index.modalities, np.asarray(vectors, dtype=np.float32), summary)


class Corpus:
    """An index directory and, where known, the source its rows came from.

    ``source`` is the folder or table the index was built from: ``qwen3vl index`` does not record it, so
    the page is told (``--source``); a ``qwen3vl search`` index names its folder itself.
    """

    def __init__(self, directory: Path, source: Path | None = None):
        self.directory = directory
        self.folder_index = (directory / META_FILE).is_file()
        if not self.folder_index and not any(directory.glob("manifest*.json")):
            raise CorpusError(
                f"{directory}: not an index (no manifest.json from `qwen3vl index`, no {META_FILE} from "
                "`qwen3vl search`)"
            )
        self._source = source
        self._lock = threading.Lock()
        self._stamp: tuple[tuple[str, int, int], ...] | None = None
        self._loaded: _Loaded | None = None
        self._folder: FileIndex | None = None
        self._records: dict[str, Record] | None = None
        self._records_stamp: tuple[tuple[str, int, int], ...] | None = None
        self._records_lock = threading.Lock()
        self._load()

    def _files(self) -> list[Path]:
        if self.folder_index:
            return [self.directory / META_FILE]
        return sorted(self.directory.glob("manifest*.json"))

    def _load(self) -> _Loaded:
        """The index as it is on disk now (read again only when its manifests changed)."""
        with self._lock:
            stamp = _stamp(self._files())
            if self._loaded is not None and stamp == self._stamp:
                return self._loaded
            if self.folder_index:
                folder = FileIndex.load(self.directory)
                if folder is None:
                    raise CorpusError(f"{self.directory}: unreadable {META_FILE}")
                self._folder = folder
                self._source = Path(folder.folder)
                summary = Summary(
                    "folder",
                    len(folder.entries),
                    folder.dimensions or None,
                    None,
                    "float32",
                    folder.folder,
                )
                loaded = _Loaded(
                    [entry.path for entry in folder.entries],
                    [entry.kind for entry in folder.entries],
                    folder.vectors,
                    summary,
                )
            else:
                try:
                    loaded = _read_bulk(self.directory, self._source)
                except (OSError, ValueError, KeyError) as error:
                    raise CorpusError(f"{self.directory}: {error}") from error
            self._stamp, self._loaded = stamp, loaded
            return loaded

    @property
    def summary(self) -> Summary:
        return self._load().summary

    def search(self, query: np.ndarray, k: int) -> list[Hit]:
        """The ``k`` rows nearest to one query vector (unit length, as the server returns it), best first."""
        loaded = self._load()
        if self.folder_index:
            assert self._folder is not None
            found = self._folder.search(query[None, :], k)[0]
            return [Hit(entry.path, entry.kind, score) for entry, score in found]
        if not loaded.ids:
            return []
        width = min(query.shape[0], loaded.vectors.shape[1])
        scores = loaded.vectors[:, :width] @ query[:width]
        best = np.argsort(-scores, kind="stable")[:k]
        return [Hit(loaded.ids[row], loaded.modalities[row], float(scores[row])) for row in best]

    def record(self, identifier: str) -> Record | None:
        """The source record of a row (its files), or None where the source is not known or lost it."""
        self._load()
        with self._records_lock:
            if self._source is None:
                return None
            # Listed on first use, and again for an id it lacks once the index has changed since (the
            # source grew under a running job): a lookup of an unknown id does not walk the source each time.
            stale = self._records is None or (
                identifier not in self._records and self._records_stamp != self._stamp
            )
            if stale:
                self._records = self._list_records(self._source)
                self._records_stamp = self._stamp
            assert self._records is not None
            return self._records.get(identifier)

    def _list_records(self, source: Path) -> dict[str, Record]:
        found: dict[str, Record] = {}
        try:
            for record in records(source):
                found.setdefault(record.id, record)  # a repeated id keeps its first row, as the job does
        except (OSError, SourceError) as error:
            raise CorpusError(f"source {source}: {error}") from error
        return found
