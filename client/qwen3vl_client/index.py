"""Folders of images, videos and texts as embedding items, and a small on-disk numpy index over them."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from qwen3vl_client.errors import ItemError
from qwen3vl_client.items import Item

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v"})
TEXT_SUFFIXES = frozenset({".txt", ".md"})
INDEX_VERSION = 1
VECTORS_FILE = "vectors.npy"
FILES_FILE = "files.jsonl"
META_FILE = "index.json"

Kind = Literal["image", "video", "text"]


@dataclass(frozen=True)
class FileEntry:
    """A file found in a folder; ``path`` is relative to the folder, with forward slashes."""

    path: str
    kind: Kind
    size: int
    mtime_ns: int


def file_kind(path: Path) -> Kind | None:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in TEXT_SUFFIXES:
        return "text"
    return None


def scan_folder(folder: Path) -> list[FileEntry]:
    """Images, videos and text files under ``folder`` (recursively, hidden names skipped), sorted."""
    entries = []
    for root, directories, files in os.walk(folder):
        directories[:] = sorted(name for name in directories if not name.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            kind = file_kind(path)
            if name.startswith(".") or kind is None:
                continue
            stat = path.stat()
            relative = path.relative_to(folder).as_posix()
            entries.append(FileEntry(relative, kind, stat.st_size, stat.st_mtime_ns))
    return sorted(entries, key=lambda entry: entry.path)


def file_item(path: Path, kind: Kind) -> Item:
    """A file as one item: an image, a video, or the text of a text file."""
    if kind == "image":
        return Item(images=(path,))
    if kind == "video":
        return Item(videos=(path,))
    return Item(text=path.read_text(encoding="utf-8", errors="replace"))


@dataclass
class FileIndex:
    """Unit vectors of a folder's files (one row per entry), saved as ``vectors.npy`` + ``files.jsonl``.

    ``failed`` maps files the server rejected to its reason; they are not sent again until they change.
    """

    folder: str
    dimensions: int
    entries: list[FileEntry]
    vectors: np.ndarray
    failed: dict[FileEntry, str] = field(default_factory=dict)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / VECTORS_FILE, self.vectors)
        with (directory / FILES_FILE).open("w", encoding="utf-8") as out:
            for entry in self.entries:
                out.write(json.dumps(asdict(entry)) + "\n")
        meta = {
            "version": INDEX_VERSION,
            "folder": self.folder,
            "dimensions": self.dimensions,
            "failed": [{**asdict(entry), "error": reason} for entry, reason in self.failed.items()],
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> FileIndex | None:
        """The index saved in ``directory``, or None if there is none (or an unreadable one)."""
        try:
            meta = json.loads((directory / META_FILE).read_text())
            if meta.get("version") != INDEX_VERSION:
                return None
            vectors = np.load(directory / VECTORS_FILE)
            lines = (directory / FILES_FILE).read_text(encoding="utf-8").splitlines()
            entries = [FileEntry(**json.loads(line)) for line in lines if line.strip()]
            failed = {}
            for record in meta.get("failed", []):
                reason = record.pop("error")
                failed[FileEntry(**record)] = reason
        except (OSError, ValueError, TypeError, KeyError):
            return None
        if len(entries) != len(vectors):
            return None
        return cls(meta["folder"], int(meta["dimensions"]), entries, vectors, failed)

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[FileEntry, float]]]:
        """The ``k`` best files per query vector by cosine similarity, best first."""
        if not self.entries:
            return [[] for _ in queries]
        width = min(queries.shape[1], self.vectors.shape[1])
        scores = queries[:, :width] @ self.vectors[:, :width].T
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [
            [(self.entries[column], float(scores[row, column])) for column in columns]
            for row, columns in enumerate(best)
        ]


@dataclass(frozen=True)
class IndexUpdate:
    """What ``update_index`` did; ``errors`` are this run's failures (``error.index`` counts ``fresh``)."""

    index: FileIndex
    embedded: int
    reused: int
    removed: int
    errors: tuple[ItemError, ...]
    fresh: tuple[FileEntry, ...]


# (items, progress) -> (vectors, errors): EmbeddingClient.embed with on_error="skip", in short.
Embedder = Callable[[list[Item]], tuple[np.ndarray, tuple[ItemError, ...]]]


def update_index(
    folder: Path, directory: Path, dimensions: int, embed: Embedder, rebuild: bool = False
) -> IndexUpdate:
    """Bring the index in ``directory`` up to date with ``folder``: embed new and changed files only.

    Files the server rejects are left out of the index and reported in ``errors``. ``dimensions`` 0
    means full; an index of other dimensions is rebuilt.
    """
    folder_key = str(folder.resolve())
    old = None if rebuild else FileIndex.load(directory)
    if old is not None and (old.folder != folder_key or old.dimensions != dimensions):
        old = None
    known: dict[FileEntry, np.ndarray] = {}
    known_failed: dict[FileEntry, str] = {}
    if old is not None:
        known = dict(zip(old.entries, old.vectors))
        known_failed = old.failed
    entries = scan_folder(folder)
    fresh = [entry for entry in entries if entry not in known and entry not in known_failed]
    fresh_vectors: dict[FileEntry, np.ndarray] = {}
    errors: tuple[ItemError, ...] = ()
    if fresh:
        vectors, errors = embed([file_item(folder / entry.path, entry.kind) for entry in fresh])
        fresh_vectors = {entry: vectors[row] for row, entry in enumerate(fresh)}
    failed = {entry: reason for entry, reason in known_failed.items() if entry in set(entries)}
    failed.update({fresh[error.index]: error.reason for error in errors})
    kept = [entry for entry in entries if entry not in failed]
    rows: list[Any] = [known[entry] if entry in known else fresh_vectors[entry] for entry in kept]
    width = max((len(row) for row in rows), default=0)
    matrix = np.zeros((len(rows), width), dtype=np.float32)
    for number, row in enumerate(rows):
        matrix[number, : len(row)] = row
    index = FileIndex(folder_key, dimensions, kept, matrix, failed)
    index.save(directory)
    removed = len({entry.path for entry in known} - {entry.path for entry in entries})
    embedded = len(fresh) - len(errors)
    return IndexUpdate(index, embedded, len(kept) - embedded, removed, errors, tuple(fresh))
