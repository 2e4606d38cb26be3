"""What a bulk job embeds: a folder tree (every image, video, .txt/.md file is one record, its id the path
relative to the folder) or a table (``.jsonl`` / ``.csv`` / ``.parquet``: an ``id`` column, ``text``,
``image``, ``video`` columns, media as paths relative to the table (or, in Parquet, the files' bytes), an
optional ``instruction``). Each record's content hash keys
its vector, and ``--shard i/N`` takes the records whose id hashes to ``i``."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwen3vl_client.index import scan_folder
from qwen3vl_client.items import Item

TABLE_SUFFIXES = (".jsonl", ".csv", ".parquet")
Medium = Path | bytes  # a file, or (a Parquet cell) its bytes
# Several media in one CSV cell are separated by this.
CSV_MEDIA_SEPARATOR = ";"


class SourceError(ValueError):
    """A source that cannot be read as a whole (no such file, a malformed table)."""


@dataclass(frozen=True)
class Record:
    """One item of the source; media are paths until ``load`` reads them."""

    id: str
    text: str | None = None
    text_file: Path | None = None  # a folder's text file: read by ``load``
    images: tuple[Medium, ...] = ()
    videos: tuple[Medium, ...] = ()
    instruction: str | None = None

    @property
    def modality(self) -> str:
        """text, image, video, or the parts of a mixed item joined by '+' (e.g. 'text+image')."""
        parts = [
            name
            for name, present in (
                ("text", self.text is not None or self.text_file is not None),
                ("image", bool(self.images)),
                ("video", bool(self.videos)),
            )
            if present
        ]
        return "+".join(parts) or "empty"

    def load(self) -> Loaded:
        """The record's content, files read (``OSError`` when one cannot be)."""
        text = self.text
        if self.text_file is not None:
            text = read_text_file(self.text_file)
        return Loaded(
            self,
            text,
            tuple(_read(medium) for medium in self.images),
            tuple(_read(medium) for medium in self.videos),
        )

    @property
    def path(self) -> Path | None:
        """The file that shows this record (its first image, video or text file), if it is one."""
        for medium in (*self.images, *self.videos, self.text_file):
            if isinstance(medium, Path):
                return medium
        return None


def _read(medium: Medium) -> bytes:
    return medium if isinstance(medium, bytes) else medium.read_bytes()


@dataclass(frozen=True)
class Loaded:
    """A record with its content in memory, and the hash of exactly that content."""

    record: Record
    text: str | None
    images: tuple[bytes, ...]
    videos: tuple[bytes, ...]

    @property
    def content_hash(self) -> str:
        return content_hash(self.text, self.images, self.videos, self.record.instruction)

    def video_seconds(self) -> float:
        """The videos' total duration as their containers state it (0 for one that does not say)."""
        return sum(media_seconds(blob) for blob in self.videos)

    def item(self) -> Item:
        return Item(
            text=self.text, images=self.images, videos=self.videos, instruction=self.record.instruction
        )


def media_seconds(blob: bytes) -> float:
    """A video's duration from its container header (0.0 when it cannot be read: the server decides)."""
    import av  # the client's video dependency, loaded only for videos

    try:
        with av.open(io.BytesIO(blob), mode="r") as container:
            if container.duration is not None:
                return float(container.duration) / av.time_base
            stream = container.streams.video[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
    except (av.error.FFmpegError, IndexError, ValueError):
        pass
    return 0.0


def read_text_file(path: Path) -> str:
    """A text file as the other commands send it (``index.file_item``): UTF-8, bad bytes replaced,
    universal newlines."""
    return path.read_text(encoding="utf-8", errors="replace")


def _text_bytes(text: str) -> bytes:
    return text.encode("utf-8")


def _combine(parts: list[tuple[bytes, str]]) -> str:
    """The content hash from each part's tag and SHA-256 (hex)."""
    digest = hashlib.sha256(b"qwen3vl-item-2\0")
    for tag, part in parts:
        digest.update(tag + bytes.fromhex(part))
    return digest.hexdigest()


def _sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def content_hash(
    text: str | None, images: tuple[bytes, ...], videos: tuple[bytes, ...], instruction: str | None
) -> str:
    """SHA-256 over everything the server sees of an item: the SHA-256 of each part (text, each image, each
    video, the instruction), tagged with its kind, in order. Names and ids are not part of it: a renamed or
    copied file has the same hash. Built from per-part digests so that ``FileDigests`` can remember a
    file's part without reading it again."""
    parts: list[tuple[bytes, str]] = []
    if text is not None:
        parts.append((b"T", _sha256(_text_bytes(text))))
    parts += [(b"I", _sha256(blob)) for blob in images]
    parts += [(b"V", _sha256(blob)) for blob in videos]
    if instruction:
        parts.append((b"N", _sha256(_text_bytes(instruction))))
    return _combine(parts)


class FileDigests:
    """Each file's part digest, remembered by (path, size, mtime) as rsync and ``qwen3vl search`` do, so
    that a resumed run does not read the whole corpus again to find what is done. ``changed`` says whether
    ``to_json`` has something new."""

    def __init__(self, known: dict[str, list[Any]] | None = None):
        self.known: dict[str, list[Any]] = dict(known or {})
        self.changed = False

    def part(self, path: Medium, text: bool) -> str:
        if isinstance(path, bytes):
            return _sha256(path)
        stat = path.stat()
        key = f"{'T' if text else 'B'}:{path.resolve()}"
        cached = self.known.get(key)
        if cached is not None and cached[0] == stat.st_size and cached[1] == stat.st_mtime_ns:
            return str(cached[2])
        blob = _text_bytes(read_text_file(path)) if text else path.read_bytes()
        part = _sha256(blob)
        self.known[key] = [stat.st_size, stat.st_mtime_ns, part]
        self.changed = True
        return part

    def content_hash(self, record: Record) -> str:
        """``record``'s content hash, reading only files that are new or changed (``OSError`` if one
        cannot be read)."""
        parts: list[tuple[bytes, str]] = []
        if record.text_file is not None:
            parts.append((b"T", self.part(record.text_file, text=True)))
        elif record.text is not None:
            parts.append((b"T", _sha256(_text_bytes(record.text))))
        parts += [(b"I", self.part(path, text=False)) for path in record.images]
        parts += [(b"V", self.part(path, text=False)) for path in record.videos]
        if record.instruction:
            parts.append((b"N", _sha256(_text_bytes(record.instruction))))
        return _combine(parts)


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` (0 <= i < N) as (i, N)."""
    try:
        index_text, count_text = text.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ValueError(f"--shard takes I/N, e.g. 0/4, got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard I/N needs 0 <= I < N, got {text!r}")
    return index, count


def shard_of(identifier: str, count: int) -> int:
    """Which of ``count`` shards an id belongs to: stable across runs, machines and Python versions."""
    digest = hashlib.sha256(identifier.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def folder_records(folder: Path) -> Iterator[Record]:
    for entry in scan_folder(folder):
        path = folder / entry.path
        if entry.kind == "image":
            yield Record(entry.path, images=(path,))
        elif entry.kind == "video":
            yield Record(entry.path, videos=(path,))
        else:
            yield Record(entry.path, text_file=path)


def _media(value: object, base: Path, where: str) -> tuple[Medium, ...]:
    if value is None or value == "":
        return ()
    values = value if isinstance(value, list) else [value]
    media: list[Medium] = []
    for medium in values:
        if medium in ("", b""):
            continue
        if isinstance(medium, bytes):
            media.append(medium)
        elif isinstance(medium, str):
            media.append(base / medium)
        else:
            raise SourceError(f"{where}: media must be paths (strings) or, in Parquet, bytes")
    return tuple(media)


def _table_record(row: dict[str, object], base: Path, where: str, split_cells: bool) -> Record:
    identifier = row.get("id")
    if identifier is None or identifier == "":
        raise SourceError(f"{where}: no id")
    media: dict[str, tuple[Medium, ...]] = {}
    for key in ("image", "video"):
        values: list[object] = []
        for column in (key, f"{key}s"):
            cell = row.get(column)
            if split_cells and isinstance(cell, str):
                values += [part.strip() for part in cell.split(CSV_MEDIA_SEPARATOR)]
            elif isinstance(cell, list):
                values += cell
            elif cell is not None:
                values.append(cell)
        media[key] = _media([value for value in values if value != ""], base, where)
    text = row.get("text")
    instruction = row.get("instruction")
    if text == "" and split_cells:
        text = None
    if not (text is None or isinstance(text, str)) or not (
        instruction is None or isinstance(instruction, str)
    ):
        raise SourceError(f"{where}: text and instruction must be strings")
    record = Record(str(identifier), text, None, media["image"], media["video"], instruction or None)
    if record.modality == "empty":
        raise SourceError(f"{where}: no text, image or video")
    return record


def table_records(path: Path) -> Iterator[Record]:
    base = path.parent
    if path.suffix.lower() == ".jsonl":
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as error:
                    raise SourceError(f"{path}:{number}: {error}") from error
                if not isinstance(row, dict):
                    raise SourceError(f"{path}:{number}: not a JSON object")
                yield _table_record(row, base, f"{path}:{number}", split_cells=False)
        return
    if path.suffix.lower() == ".parquet":
        yield from _parquet_records(path)
        return
    with path.open(encoding="utf-8", newline="") as handle:
        for number, csv_row in enumerate(csv.DictReader(handle), 2):
            yield _table_record(dict(csv_row), base, f"{path}:{number}", split_cells=True)


PARQUET_COLUMNS = ("id", "text", "image", "images", "video", "videos", "instruction")


def _parquet_records(path: Path) -> Iterator[Record]:
    """A Parquet table's rows (read a row group at a time); media cells are paths (strings) or bytes, a
    list column holds several."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
        names = [name for name in table.schema_arrow.names if name in PARQUET_COLUMNS]
        number = 0
        for batch in table.iter_batches(columns=names):
            for row in batch.to_pylist():
                number += 1
                yield _table_record(row, path.parent, f"{path}: row {number}", split_cells=False)
    except (OSError, pa.ArrowException) as error:
        raise SourceError(f"{path}: not a readable Parquet table: {error}") from error


def records(source: Path) -> Iterator[Record]:
    """The source's records in a stable order (a folder's sorted by path, a table's in row order)."""
    if source.is_dir():
        yield from folder_records(source)
    elif source.is_file() and source.suffix.lower() in TABLE_SUFFIXES:
        yield from table_records(source)
    elif source.is_file():
        raise SourceError(f"{source}: not a folder or a {'/'.join(TABLE_SUFFIXES)} table")
    else:
        raise SourceError(f"{source}: no such folder or file")
