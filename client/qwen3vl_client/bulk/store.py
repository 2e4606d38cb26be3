"""An index directory: vector shards, a manifest that says which shards are committed, and an errors file.

Every file is written to a temporary name, flushed to disk and renamed into place, and a shard counts only
once the manifest that lists it has been renamed into place; so a job killed at any moment leaves either the
old manifest or the new one, and a shard file the manifest does not list is removed on the next start.

Shards are Parquet files with the columns ``id``, ``content_hash``, ``modality``, ``dimensions``, ``dtype``,
``vector`` (a fixed-size list per item, in the manifest's vector type) and ``token_count`` (-1: not known).
Directories written before Parquet hold NumPy ``.npz`` shards with the same columns: they are read as they
are, and new shards beside them are Parquet.
Workers of one split (``--shard i/N``) share a directory: each writes its own files, tagged ``.i-of-N``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "qwen3vl-index"
VERSION = 1
UNKNOWN_TOKENS = -1
_MANIFEST = re.compile(r"^manifest(?:\.(\d+)-of-(\d+))?\.json$")


class StoreError(ValueError):
    """The directory cannot be used as asked: other settings, another split, a damaged manifest."""


@dataclass
class Rows:
    """Rows of one shard, in the vector type of the index."""

    ids: list[str]
    hashes: list[str]
    modalities: list[str]
    token_counts: np.ndarray  # int32, UNKNOWN_TOKENS where the server did not say
    vectors: np.ndarray  # [rows, stored width]
    dimensions: int
    dtype: str

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, mask: np.ndarray) -> Rows:
        chosen = np.flatnonzero(mask)
        return Rows(
            [self.ids[i] for i in chosen],
            [self.hashes[i] for i in chosen],
            [self.modalities[i] for i in chosen],
            self.token_counts[chosen],
            self.vectors[chosen],
            self.dimensions,
            self.dtype,
        )


@dataclass(frozen=True)
class ErrorRecord:
    id: str
    content_hash: str | None  # None: the item's files could not be read
    modality: str
    reason: str


@dataclass
class Manifest:
    shard: tuple[int, int]
    settings: dict[str, Any]  # model, dimensions, dtype, range: fixed for the directory's life
    shards: list[dict[str, Any]] = field(default_factory=list)  # {"file", "rows"}
    errors: list[ErrorRecord] = field(default_factory=list)
    usage: dict[str, dict[str, float]] = field(default_factory=dict)  # modality -> counters
    embed_seconds: float = 0.0
    embedded: int = 0
    database: dict[str, str] | None = None  # {"uri", "collection"}: where the vectors are searched
    source: str | None = None  # the last run's SOURCE, absolute (search results' paths)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "shard": f"{self.shard[0]}/{self.shard[1]}",
            "settings": self.settings,
            "shards": self.shards,
            "errors": [vars(error) for error in self.errors],
            "usage": self.usage,
            "embed_seconds": round(self.embed_seconds, 3),
            "embedded": self.embedded,
            **({"database": self.database} if self.database else {}),
            **({"source": self.source} if self.source else {}),
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Manifest:
        if document.get("format") != FORMAT or document.get("version") != VERSION:
            raise StoreError(f"not a {FORMAT} v{VERSION} manifest")
        index, count = (int(part) for part in str(document["shard"]).split("/"))
        return cls(
            (index, count),
            dict(document["settings"]),
            list(document["shards"]),
            [ErrorRecord(**error) for error in document["errors"]],
            {name: dict(counts) for name, counts in document["usage"].items()},
            float(document["embed_seconds"]),
            int(document["embedded"]),
            document.get("database"),
            document.get("source"),
        )


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened for fsync
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def write_atomic(path: Path, write: Any) -> None:
    """``write(binary file)`` into a temporary file beside ``path``, flushed to disk, renamed to ``path``."""
    handle, temporary = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_directory(path.parent)


SHARD_SUFFIXES = (".parquet", ".npz")  # written, and still read (directories from before Parquet)
_ARROW_TYPES = {"float32": "float32", "float16": "float16", "int8": "int8", "uint8": "uint8"}


def write_rows(path: Path, rows: Rows) -> None:
    """One shard: Parquet, unless ``path`` names an ``.npz``."""
    if path.suffix == ".parquet":
        write_atomic(path, lambda out: _write_parquet(out, rows))
        return

    def write(out: Any) -> None:
        np.savez(
            out,
            id=np.array(rows.ids, dtype=str),
            content_hash=np.array(rows.hashes, dtype=str),
            modality=np.array(rows.modalities, dtype=str),
            dimensions=np.full(len(rows), rows.dimensions, dtype=np.int32),
            dtype=np.array([rows.dtype] * len(rows), dtype=str),
            vector=rows.vectors,
            token_count=np.asarray(rows.token_counts, dtype=np.int32),
        )

    write_atomic(path, write)


def _write_parquet(out: Any, rows: Rows) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    vectors = np.ascontiguousarray(rows.vectors)
    width = vectors.shape[1] if vectors.ndim == 2 else 0
    table = pa.table(
        {
            "id": pa.array(rows.ids, pa.string()),
            "content_hash": pa.array(rows.hashes, pa.string()),
            "modality": pa.array(rows.modalities, pa.string()),
            "dimensions": pa.array(np.full(len(rows), rows.dimensions, dtype=np.int32)),
            "dtype": pa.array([rows.dtype] * len(rows), pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), width),
            "token_count": pa.array(np.asarray(rows.token_counts, dtype=np.int32)),
        }
    )
    pq.write_table(table, out)


def _read_parquet(path: Path, dimensions: int, dtype: str) -> Rows:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    column = table.column("vector").combine_chunks()
    width = column.type.list_size
    values = column.flatten().to_numpy(zero_copy_only=False)
    count = table.num_rows
    return Rows(
        [str(value) for value in table.column("id").to_pylist()],
        [str(value) for value in table.column("content_hash").to_pylist()],
        [str(value) for value in table.column("modality").to_pylist()],
        table.column("token_count").to_numpy().astype(np.int32),
        values.astype(np.dtype(_ARROW_TYPES.get(dtype, values.dtype.name)), copy=False).reshape(count, width),
        int(table.column("dimensions")[0].as_py()) if count else dimensions,
        dtype,
    )


def read_rows(path: Path, dimensions: int, dtype: str) -> Rows:
    if path.suffix == ".parquet":
        return _read_parquet(path, dimensions, dtype)
    with np.load(path, allow_pickle=False) as data:
        count = len(data["id"])
        return Rows(
            [str(value) for value in data["id"]],
            [str(value) for value in data["content_hash"]],
            [str(value) for value in data["modality"]],
            data["token_count"].astype(np.int32),
            data["vector"] if count else data["vector"].reshape(0, 0),
            int(data["dimensions"][0]) if count else dimensions,
            dtype,
        )


def _check_settings(theirs: dict[str, Any], ours: dict[str, Any], where: str) -> None:
    for key, value in ours.items():
        if value is not None and theirs.get(key) not in (None, value):
            raise StoreError(
                f"{where} was indexed with {key}={theirs[key]!r}, not {value!r}: use the same options or "
                "another --out"
            )


class Store:
    """One worker's view of an index directory: its own manifest, shards and errors file."""

    def __init__(self, directory: Path, shard: tuple[int, int] = (0, 1)):
        self.directory = directory
        self.shard = shard
        self.tag = "" if shard == (0, 1) else f".{shard[0]}-of-{shard[1]}"
        self.manifest_path = directory / f"manifest{self.tag}.json"
        self.errors_path = directory / f"errors{self.tag}.jsonl"
        self.digests_path = directory / f"digests{self.tag}.json"
        self.manifest: Manifest | None = None

    def shard_name(self, sequence: int) -> str:
        return f"vectors{self.tag}.{sequence:06d}.parquet"

    @staticmethod
    def load_writer() -> None:
        """Import the Parquet writer now, and what pyarrow imports at its first array (pandas, when it is
        installed): ~1 s of CPU on this 2-core host that the first commit paid while the server waited."""
        import pyarrow as pa
        import pyarrow.parquet  # noqa: F401

        pa.array([0])

    def open(self, settings: dict[str, Any], create: bool = True) -> Manifest | None:
        """Load (or, with ``create``, start) this worker's manifest and clear what a killed run left.

        Raises ``StoreError`` when the directory holds another split or was built with other settings.
        """
        if self.directory.exists():
            for path in self.directory.iterdir():
                match = _MANIFEST.match(path.name)
                if match and int(match.group(2) or 1) != self.shard[1]:
                    raise StoreError(
                        f"{self.directory} holds a {match.group(2) or 1}-way split ({path.name}); use that "
                        f"--shard count or another --out"
                    )
                if match and path != self.manifest_path and settings:
                    # The workers of one split must store the same vectors, or copies between them mix types.
                    try:
                        theirs = json.loads(path.read_text(encoding="utf-8"))["settings"]
                    except (OSError, ValueError, KeyError):
                        continue
                    _check_settings(theirs, settings, f"{self.directory} ({path.name})")
        if self.manifest_path.exists():
            try:
                manifest = Manifest.from_json(json.loads(self.manifest_path.read_text(encoding="utf-8")))
            except (ValueError, KeyError, TypeError) as error:
                raise StoreError(f"{self.manifest_path}: unreadable manifest: {error}") from error
            _check_settings(manifest.settings, settings, str(self.directory))
            for key, value in settings.items():
                if manifest.settings.get(key) is None:
                    manifest.settings[key] = value
        elif create:
            manifest = Manifest(self.shard, dict(settings))
        else:
            return None
        self.manifest = manifest
        if create:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._remove_leftovers(manifest)
            if self.manifest_path.exists():
                self._write_errors()  # a run killed between the manifest and the errors file
        return manifest

    def load_digests(self) -> dict[str, list[Any]]:
        """The remembered file digests (a cache: an unreadable one is empty)."""
        try:
            known = json.loads(self.digests_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return known if isinstance(known, dict) else {}

    def save_digests(self, known: dict[str, list[Any]]) -> None:
        document = json.dumps(known, separators=(",", ":"))
        write_atomic(self.digests_path, lambda out: out.write(document.encode("utf-8")))

    def _write_errors(self) -> None:
        assert self.manifest is not None
        lines = "".join(json.dumps(vars(error), ensure_ascii=False) + "\n" for error in self.manifest.errors)
        if not self.errors_path.exists() or self.errors_path.read_text(encoding="utf-8") != lines:
            write_atomic(self.errors_path, lambda out: out.write(lines.encode("utf-8")))

    def _remove_leftovers(self, manifest: Manifest) -> None:
        """Temporary files and shards no manifest lists: what a run killed mid-write leaves."""
        listed = {entry["file"] for entry in manifest.shards}
        tag = re.escape(self.tag)
        shard = re.compile(rf"^vectors{tag}\.\d+\.(npz|parquet)$")
        temporary = re.compile(
            rf"^\.tmp-(manifest{tag}\.json|errors{tag}\.jsonl|digests{tag}\.json|vectors{tag}\.\d+\.(npz|parquet))\."
        )
        for path in self.directory.iterdir():
            if (shard.match(path.name) and path.name not in listed) or temporary.match(path.name):
                with contextlib.suppress(OSError):
                    path.unlink()

    def _next_name(self) -> str:
        assert self.manifest is not None
        used = {entry["file"] for entry in self.manifest.shards}
        sequence = len(used)
        while self.shard_name(sequence) in used:
            sequence += 1
        return self.shard_name(sequence)

    def rows(self, only: Collection[str] | None = None) -> Iterator[tuple[str, Rows]]:
        """(file name, rows) of every committed shard of this worker (those named in ``only``); safe to
        commit while iterating."""
        assert self.manifest is not None
        settings = self.manifest.settings
        for entry in list(self.manifest.shards):
            if only is not None and entry["file"] not in only:
                continue
            path = self.directory / entry["file"]
            yield entry["file"], read_rows(path, int(settings.get("dimensions") or 0), str(settings["dtype"]))

    def commit(
        self,
        rows: Rows | None,
        errors: list[ErrorRecord] = (),  # type: ignore[assignment]
        usage: dict[str, dict[str, float]] | None = None,
        seconds: float = 0.0,
        embedded: int = 0,
        replaces: str | None = None,
        drop_errors: set[str] | None = None,
    ) -> None:
        """Write ``rows`` as a new shard (replacing shard file ``replaces``), then the manifest that lists
        it with ``errors`` added (and the ids in ``drop_errors`` removed), then the errors file."""
        manifest = self.manifest
        assert manifest is not None
        new_entry = None
        if rows is not None and len(rows):
            name = self._next_name()
            write_rows(self.directory / name, rows)
            new_entry = {"file": name, "rows": len(rows)}
        shards = [entry for entry in manifest.shards if entry["file"] != replaces]
        if new_entry is not None:
            shards.append(new_entry)
        manifest.shards = shards
        if drop_errors:
            manifest.errors = [error for error in manifest.errors if error.id not in drop_errors]
        manifest.errors = manifest.errors + list(errors)
        for modality, counters in (usage or {}).items():
            totals = manifest.usage.setdefault(modality, {})
            for name, value in counters.items():
                total = totals.get(name, 0) + value
                totals[name] = round(total, 3) if isinstance(total, float) else total
        manifest.embed_seconds += seconds
        manifest.embedded += embedded
        document = json.dumps(manifest.to_json(), indent=1, ensure_ascii=False) + "\n"
        write_atomic(self.manifest_path, lambda out: out.write(document.encode("utf-8")))
        self._write_errors()
        if replaces is not None:
            with contextlib.suppress(OSError):
                (self.directory / replaces).unlink()


def worker_stores(directory: Path) -> list[Store]:
    """A store per manifest in ``directory`` (every worker of its split)."""
    stores = []
    if directory.is_dir():
        for path in sorted(directory.iterdir()):
            match = _MANIFEST.match(path.name)
            if match:
                shard = (int(match.group(1) or 0), int(match.group(2) or 1))
                stores.append(Store(directory, shard))
    return stores


@dataclass(frozen=True)
class Index:
    """Every committed row of an index directory (all workers), read back."""

    ids: list[str]
    hashes: list[str]
    modalities: list[str]
    token_counts: np.ndarray
    vectors: np.ndarray
    settings: dict[str, Any]
    errors: list[ErrorRecord]


def read_index(directory: Path) -> Index:
    """All workers' committed rows of ``directory``, sorted by id."""
    parts: list[Rows] = []
    errors: list[ErrorRecord] = []
    settings: dict[str, Any] = {}
    for store in worker_stores(directory):
        manifest = store.open({}, create=False)
        if manifest is None:
            continue
        settings = manifest.settings
        errors += manifest.errors
        parts += [rows for _, rows in store.rows()]
    ids = [identifier for rows in parts for identifier in rows.ids]
    hashes = [value for rows in parts for value in rows.hashes]
    modalities = [value for rows in parts for value in rows.modalities]
    order = sorted(range(len(ids)), key=ids.__getitem__)
    nonempty = [rows.vectors for rows in parts if len(rows)]
    vectors = np.concatenate(nonempty)[order] if nonempty else np.zeros((0, 0), dtype=np.float32)
    counts = np.concatenate([rows.token_counts for rows in parts]) if parts else np.zeros(0, np.int32)
    return Index(
        [ids[i] for i in order],
        [hashes[i] for i in order],
        [modalities[i] for i in order],
        counts[order],
        vectors,
        settings,
        sorted(errors, key=lambda error: error.id),
    )
