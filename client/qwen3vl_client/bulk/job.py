"""The bulk job: plan what a source still needs against what an index directory already holds, then embed
it chunk by chunk, committing each chunk as one shard.

Exactly once: an item is done when a committed shard holds its (id, content hash); it is sent only when no
committed row anywhere in the directory has its content hash (a renamed or duplicated file is copied, not
sent). Rows whose id left the source, or whose content changed, are dropped from their shard.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np

from qwen3vl_client.bulk.quantize import compact, default_range
from qwen3vl_client.bulk.sources import FileDigests, Loaded, Record, shard_of
from qwen3vl_client.bulk.store import UNKNOWN_TOKENS, ErrorRecord, Rows, Store, worker_stores
from qwen3vl_client.bulk.vectordb import Mirror
from qwen3vl_client.items import Item

DEFAULT_ROWS_PER_SHARD = 512


@dataclass(frozen=True)
class JobOptions:
    model: str
    dimensions: int = 0  # 0: the model's full width
    dtype: str = "float32"
    value_range: float | None = None  # int8/uint8 range; None: quantize.default_range of the width
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
    retry_errors: bool = False

    def settings(self) -> dict[str, Any]:
        """What must stay the same for the life of an index directory."""
        return {
            "model": self.model,
            "dimensions": self.dimensions,
            "dtype": self.dtype,
            "range": self.value_range,
        }


@dataclass
class EmbedOutcome:
    """What an embedder returns for a list of items: float32 vectors (rows of failed items unused), the
    tokens each item took when the server says, and the reason of each failed item by its position."""

    vectors: np.ndarray
    token_counts: list[int] | None = None
    errors: dict[int, str] = field(default_factory=dict)


class Embedder(Protocol):
    def embed(self, items: list[Item], dimensions: int) -> EmbedOutcome: ...


@dataclass(frozen=True)
class Planned:
    record: Record
    content_hash: str | None  # None: unreadable when planned (read again when its chunk is due)


@dataclass
class Plan:
    """What a run will do for its part of the source."""

    total: int = 0
    done: int = 0
    known_errors: int = 0
    pending: list[Planned] = field(default_factory=list)
    # content hash -> (stored vector, tokens): rows anywhere in the directory that pending items can copy
    reusable: dict[str, tuple[np.ndarray, int]] = field(default_factory=dict)
    repeated: set[str] = field(default_factory=set)  # hashes pending more than once
    duplicate_ids: list[str] = field(default_factory=list)
    drops: dict[str, np.ndarray] = field(default_factory=dict)  # own shard file -> rows to keep
    drop_errors: set[str] = field(default_factory=set)
    by_modality: Counter[str] = field(default_factory=Counter)  # pending items
    width: int | None = None  # full vector width, when a committed row says
    paths: dict[str, str | None] = field(default_factory=dict)  # id -> the file that shows the item


def make_plan(
    records: Iterable[Record],
    store: Store,
    shard: tuple[int, int],
    retry_errors: bool = False,
    digests: FileDigests | None = None,
) -> Plan:
    """Compare this worker's part of the source with the directory (hashes every file that ``digests``
    does not remember unchanged)."""
    digests = digests or FileDigests()
    manifest = store.manifest
    assert manifest is not None
    plan = Plan()
    current: dict[str, str | None] = {}
    planned: list[Planned] = []
    for record in records:
        if shard[1] > 1 and shard_of(record.id, shard[1]) != shard[0]:
            continue
        if record.id in current:
            plan.duplicate_ids.append(record.id)
            continue
        try:
            digest: str | None = digests.content_hash(record)
        except OSError:
            digest = None
        current[record.id] = digest
        planned.append(Planned(record, digest))
        path = record.path
        plan.paths[record.id] = None if path is None else str(path.absolute())
    plan.total = len(planned)
    committed: dict[str, str] = {}
    for name, rows in store.rows():
        keep = np.array(
            [current.get(identifier, "") == digest for identifier, digest in zip(rows.ids, rows.hashes)],
            dtype=bool,
        )
        committed.update((i, h) for i, h, kept in zip(rows.ids, rows.hashes, keep) if kept)
        if not keep.all():
            plan.drops[name] = keep
    failed = {error.id: error for error in manifest.errors}
    for error in manifest.errors:
        stays = (
            error.id in current and error.content_hash is not None and current[error.id] == error.content_hash
        )
        if not stays or retry_errors:
            plan.drop_errors.add(error.id)
    for entry in planned:
        if entry.content_hash is not None and committed.get(entry.record.id) == entry.content_hash:
            plan.done += 1
            continue
        if entry.record.id in failed and entry.record.id not in plan.drop_errors:
            plan.known_errors += 1
            continue
        plan.pending.append(entry)
        plan.by_modality[entry.record.modality] += 1
    hashes = Counter(entry.content_hash for entry in plan.pending if entry.content_hash is not None)
    plan.repeated = {digest for digest, count in hashes.items() if count > 1}
    wanted = set(hashes)
    for other in worker_stores(store.directory):
        try:
            other_manifest = other.open({}, create=False) if other.tag != store.tag else manifest
            if other_manifest is None:
                continue
            other.manifest = other_manifest
            plan.width = plan.width or other_manifest.settings.get("width")
            for _, rows in other.rows():
                for row, digest in enumerate(rows.hashes):
                    if digest in wanted and digest not in plan.reusable:
                        plan.reusable[digest] = (rows.vectors[row].copy(), int(rows.token_counts[row]))
        except (OSError, ValueError, KeyError):
            continue  # another worker rewrote a shard meanwhile: its items are embedded instead
    return plan


@dataclass
class Usage:
    """Counters per modality: items committed, embedded (sent), reused (copied), failed, tokens (the
    server's TOKEN_COUNT of the items sent and copied), images and video_seconds (of the items sent) and
    model_seconds (the wall time of the chunk's embedding calls, shared among its sent items by tokens)."""

    counters: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, modality: str, **counts: float) -> None:
        self.counters.setdefault(modality, Counter()).update(counts)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {
            modality: {
                name: round(value, 3) if isinstance(value, float) else value for name, value in counts.items()
            }
            for modality, counts in sorted(self.counters.items())
        }


USAGE_COLUMNS = (
    "items",
    "embedded",
    "reused",
    "failed",
    "tokens",
    "images",
    "video_seconds",
    "model_seconds",
)


def usage_table(usage: dict[str, dict[str, float]]) -> str:
    headers = [name.replace("_seconds", " s") for name in USAGE_COLUMNS]
    lines = [f"{'modality':<18}" + "".join(f"{name:>10}" for name in headers)]
    for modality, counts in sorted(usage.items()):
        cells = []
        for name in USAGE_COLUMNS:
            value = counts.get(name)
            if value is None:
                # Tokens only where the server reported them: "-" is "not known", not zero.
                cells.append("-" if name == "tokens" else "0")
            elif name.endswith("_seconds"):
                cells.append(f"{value:.1f}")
            else:
                cells.append(str(int(value)))
        lines.append(f"{modality:<18}" + "".join(f"{cell:>10}" for cell in cells))
    return "\n".join(lines)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def progress_line(done: int, total: int, elapsed: float, failed: int, tokens: int) -> str:
    """``index 120/500 (24%)  35.2 items/s  ETA 0:00:11  failed 1`` (tokens/s when the server says)."""
    rate = done / elapsed if elapsed > 0 else 0.0
    percent = 100.0 * done / total if total else 100.0
    eta = format_duration((total - done) / rate) if rate > 0 else "?"
    line = f"index {done}/{total} ({percent:.0f}%)  {rate:.1f} items/s  ETA {eta}  failed {failed}"
    if tokens:
        line += f"  {tokens / elapsed if elapsed > 0 else 0:.0f} tokens/s"
    return line


class Progress:
    """A live line on a terminal, else a line every ``every`` seconds (logs of a scheduler's pod)."""

    def __init__(self, total: int, stream: TextIO, live: bool | None, every: float = 30.0):
        self.total, self.stream, self.every = total, stream, every
        self.live = stream.isatty() if live is None else live
        self.quiet = live is False
        self.start = self.last = time.monotonic()
        self.done = self.failed = self.tokens = 0

    def update(self, done: int, failed: int, tokens: int, final: bool = False) -> None:
        self.done += done
        self.failed += failed
        self.tokens += tokens
        now = time.monotonic()
        if self.quiet or not self.total:
            return
        line = progress_line(self.done, self.total, now - self.start, self.failed, self.tokens)
        if self.live:
            self.stream.write("\r" + line + ("\n" if final else ""))
            self.stream.flush()
        elif final or now - self.last >= self.every:
            self.stream.write(line + "\n")
            self.last = now


@dataclass
class Report:
    plan: Plan
    usage: Usage
    seconds: float
    embedded: int


def _chunks(entries: list[Planned], size: int) -> Iterable[list[Planned]]:
    for start in range(0, len(entries), size):
        yield entries[start : start + size]


# What the server answered for one content hash: (stored vector or None, tokens, error reason).
Answer = tuple[np.ndarray | None, int, str]


def _load(chunk: list[Planned]) -> tuple[list[Loaded], list[ErrorRecord]]:
    """The chunk's items read (their hashes are taken from exactly the bytes that will be sent)."""
    loaded: list[Loaded] = []
    errors: list[ErrorRecord] = []
    for entry in chunk:
        record = entry.record
        try:
            loaded.append(record.load())
        except OSError as error:
            errors.append(ErrorRecord(record.id, None, record.modality, f"cannot read file: {error}"))
    return loaded, errors


def _embed_new(
    loaded: list[Loaded],
    hashes: list[str],
    known: Callable[[str], bool],
    embedder: Embedder,
    options: JobOptions,
    settings: dict[str, Any],
) -> dict[str, Answer]:
    """Send each content hash of the chunk that is not ``known`` (has a vector, or is sent elsewhere), once;
    the answers in the index's type. The first answer fixes the directory's width and, for int8/uint8, its
    range (in ``settings``)."""
    first: dict[str, int] = {}
    for position, digest in enumerate(hashes):
        if not known(digest) and digest not in first:
            first[digest] = position
    if not first:
        return {}
    positions = list(first.values())
    outcome = embedder.embed([loaded[position].item() for position in positions], options.dimensions)
    good = [row for row in range(len(positions)) if row not in outcome.errors]
    stored = None
    if good:
        width = options.dimensions or outcome.vectors.shape[1]
        settings.setdefault("width", width)
        if options.dtype in ("int8", "uint8") and settings.get("range") is None:
            settings["range"] = default_range(width)
        stored = compact(
            outcome.vectors[good], options.dtype, options.dimensions or None, settings.get("range")
        )
    answers: dict[str, Answer] = {}
    for row, position in enumerate(positions):
        tokens = UNKNOWN_TOKENS if outcome.token_counts is None else int(outcome.token_counts[row])
        if row in outcome.errors:
            answers[hashes[position]] = (None, tokens, outcome.errors[row])
        else:
            assert stored is not None
            answers[hashes[position]] = (stored[good.index(row)], tokens, "")
    return answers


def _chunk_rows(
    loaded: list[Loaded],
    hashes: list[str],
    reusable: dict[str, tuple[np.ndarray, int]],
    answers: dict[str, Answer],
    errors: list[ErrorRecord],
    usage: Usage,
    dtype: str,
    width: int,
    seconds: float = 0.0,
) -> Rows | None:
    """The chunk's rows in source order (copies and answers); failed items are added to ``errors``.
    ``seconds`` (the embedding calls' wall time) is shared among the items sent, by their tokens."""
    columns: dict[str, list[Any]] = {"ids": [], "hashes": [], "modalities": [], "counts": [], "vectors": []}
    sent: set[str] = set()
    weights: list[tuple[str, int]] = []
    for item, digest in zip(loaded, hashes):
        record = item.record
        if digest in reusable:
            vector, tokens = reusable[digest]
            usage.add(record.modality, items=1, reused=1)
        else:
            answer, tokens, reason = answers[digest]
            if answer is None:
                errors.append(ErrorRecord(record.id, digest, record.modality, reason))
                usage.add(record.modality, failed=1)
                continue
            vector = answer
            fresh = digest not in sent  # the same content twice in one chunk is sent once
            sent.add(digest)
            usage.add(record.modality, items=1, embedded=int(fresh), reused=int(not fresh))
            if fresh:
                usage.add(record.modality, images=len(item.images), video_seconds=item.video_seconds())
                weights.append((record.modality, max(tokens, 1)))
        if tokens >= 0:
            usage.add(record.modality, tokens=tokens)
        for name, value in zip(columns, (record.id, digest, record.modality, tokens, vector)):
            columns[name].append(value)
    total = sum(weight for _, weight in weights)
    for modality, weight in weights:
        usage.add(modality, model_seconds=seconds * weight / total)
    if not columns["ids"]:
        return None
    counts = np.array(columns["counts"], dtype=np.int32)
    matrix = np.stack(columns["vectors"])
    return Rows(columns["ids"], columns["hashes"], columns["modalities"], counts, matrix, width, dtype)


@dataclass
class _Embedded:
    """One chunk, embedded and ready to commit."""

    size: int
    rows: Rows | None
    errors: list[ErrorRecord]
    usage: Usage
    seconds: float
    embedded: int


# Chunks embedded at once, each by a thread with an embedder of its own: the next chunk's requests go out
# while the last ones of the chunk before it are answered. One chunk at a time left the server idle at each
# chunk's end and while the next one was read.
CHUNKS_AT_ONCE = 2
# How long a stopped job waits for the chunks it embedded ahead (not committed: the next run sends them).
_AHEAD_JOIN_SECONDS = 5.0
_POLL_SECONDS = 0.1


def _embedded_chunks(
    plan: Plan, embedder: Embedder, options: JobOptions, settings: dict[str, Any]
) -> Iterator[_Embedded]:
    """Each pending chunk read, embedded and made into rows, in order, while the commits of the chunks
    before it run: CHUNKS_AT_ONCE threads embed, each with its own embedder (``embedder`` and, when it has
    ``twin()``, its twins; one thread without), at most two chunks each started and not yet committed.
    A content repeated in the plan is sent by the first chunk that holds it; later chunks make their rows
    after the chunk before them has and copy it from ``plan.reusable`` (or send it after all, where it
    failed there). An error in a thread is raised here, after the chunks made before it."""
    chunks = list(_chunks(plan.pending, options.rows_per_shard))
    first_chunk: dict[str, int] = {}
    for number, chunk in enumerate(chunks):
        for entry in chunk:
            if entry.content_hash is not None and entry.content_hash in plan.repeated:
                first_chunk.setdefault(entry.content_hash, number)
    twin = getattr(embedder, "twin", None)
    embedders = [embedder] + ([twin() for _ in range(CHUNKS_AT_ONCE - 1)] if callable(twin) else [])
    results: list[Future[_Made]] = [Future() for _ in chunks]
    ahead = threading.Semaphore(2 * len(embedders))  # chunks started and not yet committed
    stop = threading.Event()

    def work(lane: int) -> None:
        mine = embedders[lane]
        try:
            for number in range(lane, len(chunks), len(embedders)):
                while not ahead.acquire(timeout=_POLL_SECONDS):
                    if stop.is_set():
                        return
                previous = results[number - 1] if number else None
                try:
                    made = _embed_chunk(
                        number,
                        chunks[number],
                        plan,
                        first_chunk,
                        previous,
                        stop,
                        mine,
                        options,
                        dict(settings),
                    )
                except BaseException as error:  # raised in the caller's thread, in order
                    results[number].set_exception(error)
                    return
                if made is None:  # stopped, or an earlier chunk failed (raised there)
                    return
                results[number].set_result(made)
        finally:
            # In the thread that used it: the HTTP client's gevent pool belongs to the thread that made it
            # (closed from another it raised LoopExit, "this operation would block forever").
            close = getattr(mine, "close", None)
            if callable(close):
                close()

    threads = [
        threading.Thread(target=work, args=(lane,), name=f"bulk-embed-{lane}", daemon=True)
        for lane in range(len(embedders))
    ]
    for thread in threads:
        thread.start()
    try:
        for result in results:
            made = result.result()
            for key, value in made.settings.items():  # the width and range the first answers fixed
                if settings.get(key) is None:
                    settings[key] = value
            yield made.embedded
            ahead.release()
    finally:
        stop.set()
        for thread in threads:
            thread.join(_AHEAD_JOIN_SECONDS)


@dataclass
class _Made:
    embedded: _Embedded
    settings: dict[str, Any]  # what the chunk's answers fixed (width, int8 range)
    ended: float  # when its requests were answered (time.monotonic)


def _settled(previous: Future[_Made] | None, stop: threading.Event) -> bool:
    """Wait for the chunk before (None: there is none); False when it failed or the job stopped."""
    if previous is None:
        return True
    while not previous.done():
        if stop.is_set():
            return False
        wait([previous], timeout=_POLL_SECONDS)
    return previous.exception() is None


def _embed_chunk(
    number: int,
    chunk: list[Planned],
    plan: Plan,
    first_chunk: dict[str, int],
    previous: Future[_Made] | None,
    stop: threading.Event,
    embedder: Embedder,
    options: JobOptions,
    settings: dict[str, Any],
) -> _Made | None:
    """One chunk: read, send what no chunk before it sends, wait for the chunk before it, copy or send the
    rest, make the rows, and offer its repeated contents to the chunks after it. ``settings``: a copy of
    the directory's; what the chunk's answers fixed in it is returned."""
    reusable = plan.reusable
    loaded, errors = _load(chunk)
    chunk_usage = Usage()
    for unread in errors:
        chunk_usage.add(unread.modality, failed=1)
    hashes = [item.content_hash for item in loaded]
    earlier = {digest for digest in hashes if first_chunk.get(digest, number) < number}
    started = time.monotonic()
    answers = _embed_new(
        loaded, hashes, lambda digest: digest in reusable or digest in earlier, embedder, options, settings
    )
    ended = time.monotonic()
    if not _settled(previous, stop):
        return None
    # The time only this chunk was being embedded: the chunk before it had the part they shared.
    seconds = max(0.0, ended - max(started, previous.result().ended if previous is not None else 0.0))
    # Sent by an earlier chunk but not embedded there (the item failed): sent again, as it always was.
    started = time.monotonic()
    answers.update(
        _embed_new(
            loaded,
            hashes,
            lambda digest: digest in reusable or digest in answers,
            embedder,
            options,
            settings,
        )
    )
    seconds += time.monotonic() - started
    width = options.dimensions or settings.get("width") or plan.width or 0
    rows = _chunk_rows(
        loaded, hashes, reusable, answers, errors, chunk_usage, options.dtype, int(width), seconds
    )
    fixed = {} if rows is None else {"width": width, "range": settings.get("range")}
    for digest, (answer, tokens, _) in answers.items():
        if answer is not None and digest in plan.repeated:
            reusable[digest] = (answer, tokens)  # later chunks copy it
    embedded = sum(1 for answer in answers.values() if answer[0] is not None)
    return _Made(_Embedded(len(chunk), rows, errors, chunk_usage, seconds, embedded), fixed, ended)


def run(
    plan: Plan,
    store: Store,
    embedder: Embedder,
    options: JobOptions,
    progress: Callable[[int, int, int], None] | None = None,
    mirror: Mirror | None = None,
) -> Report:
    """Embed ``plan.pending`` chunk by chunk; each chunk becomes one committed shard (and, with ``mirror``,
    is upserted into the vector database, which is first brought level with the committed shards). The
    next chunk is embedded while one is committed; commits stay in order, one at a time. The embedder is
    used and closed (when it has ``close``) in the thread that embeds."""
    manifest = store.manifest
    assert manifest is not None
    store.load_writer()
    started = time.monotonic()
    if plan.drops or plan.drop_errors:
        for name, kept in store.rows(only=plan.drops):
            store.commit(kept.take(plan.drops[name]), replaces=name)
        store.commit(None, drop_errors=plan.drop_errors)
    if mirror is not None:
        mirror.reconcile((rows for _, rows in store.rows()), manifest.settings)
    usage = Usage()
    embedded_total = 0
    for done in _embedded_chunks(plan, embedder, options, manifest.settings):
        store.commit(done.rows, done.errors, done.usage.as_dict(), done.seconds, done.embedded)
        if mirror is not None and done.rows is not None:
            mirror.add(done.rows, manifest.settings)
        embedded_total += done.embedded
        for modality, counters in done.usage.counters.items():
            usage.counters.setdefault(modality, Counter()).update(counters)
        if progress is not None:
            rows = done.rows
            known = 0 if rows is None else int(rows.token_counts[rows.token_counts >= 0].sum())
            progress(done.size, len(done.errors), known)
    return Report(plan, usage, time.monotonic() - started, embedded_total)


def dry_run_text(plan: Plan, store: Store, source: Path) -> str:
    """What ``--dry-run`` prints: counts and, from earlier runs of this directory, a time estimate."""
    manifest = store.manifest
    assert manifest is not None
    reused = sum(1 for entry in plan.pending if entry.content_hash in plan.reusable)
    lines = [
        f"source {source}: {plan.total} items in this part"
        + (f" ({len(plan.duplicate_ids)} repeated ids left out)" if plan.duplicate_ids else ""),
        f"already indexed {plan.done}, known bad {plan.known_errors}, to do {len(plan.pending)} "
        f"({reused} copied from vectors already in {store.directory}, {len(plan.pending) - reused} to embed)",
        "to do by modality: "
        + ", ".join(f"{name} {count}" for name, count in sorted(plan.by_modality.items())),
    ]
    if manifest.embedded and manifest.embed_seconds > 0:
        rate = manifest.embedded / manifest.embed_seconds
        estimate = format_duration((len(plan.pending) - reused) / rate)
        lines.append(f"estimate {estimate} at this directory's earlier {rate:.1f} items/s")
    tokens = 0.0
    for name, count in plan.by_modality.items():
        counts = manifest.usage.get(name, {})
        if counts.get("tokens") and counts.get("items"):
            tokens += count * counts["tokens"] / counts["items"]  # this modality's earlier tokens per item
    if tokens:
        lines.append(f"estimate {tokens:.0f} tokens at this directory's earlier tokens per item and modality")
    return "\n".join(lines)
