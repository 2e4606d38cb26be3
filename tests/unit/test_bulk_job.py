"""The bulk job without a server: sources and content hashes, sharding, the store's atomic commits, and
resume after a crash at every write (a fake embedder stands in for the server)."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from qwen3vl_client.bulk import store as store_module
from qwen3vl_client.bulk.job import CHUNKS_AT_ONCE, EmbedOutcome, JobOptions, make_plan, progress_line, run
from qwen3vl_client.bulk.quantize import compact
from qwen3vl_client.bulk.sources import (
    FileDigests,
    Record,
    SourceError,
    content_hash,
    parse_shard,
    records,
    shard_of,
)
from qwen3vl_client.bulk.store import Store, StoreError, read_index
from qwen3vl_client.items import Item

WIDTH = 16


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, and no ``except Exception`` catches it."""


class FakeEmbedder:
    """Vectors derived from each item's content; text 'BAD' is refused as the server refuses a row."""

    def __init__(self, fail_after: int | None = None):
        self.sent: list[str] = []
        self.fail_after = fail_after

    def twin(self) -> FakeEmbedder:
        """The same server: the job embeds two chunks at once, one from another thread."""
        return self

    def embed(self, items: list[Item], dimensions: int) -> EmbedOutcome:
        vectors = np.zeros((len(items), WIDTH), dtype=np.float32)
        errors = {}
        for row, item in enumerate(items):
            if self.fail_after is not None and len(self.sent) >= self.fail_after:
                raise Killed
            key = content_hash(item.text, tuple(item.images), tuple(item.videos), item.instruction)
            self.sent.append(key)
            if item.text == "BAD":
                errors[row] = "text is not allowed here"
            seed = int(key[:8], 16)
            vectors[row] = np.random.default_rng(seed).normal(size=WIDTH)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return EmbedOutcome(vectors[:, : dimensions or WIDTH], [7] * len(items), errors)


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_folder(tmp_path / "corpus")


def make_folder(root: Path) -> Path:
    """Nine notes, a copy of one, a text the fake server refuses, CRLF text, an image, a clip, a stray."""
    (root / "sub").mkdir(parents=True)
    for number in range(9):
        (root / f"note{number}.txt").write_text(f"note number {number}")
    (root / "sub" / "copy-of-note3.md").write_text("note number 3")  # duplicate content
    (root / "bad.txt").write_text("BAD")
    (root / "windows.txt").write_bytes(b"lines\r\nending\r\nin CRLF \xff")
    (root / "pic.png").write_bytes(b"\x89PNG fake image bytes")
    (root / "clip.mp4").write_bytes(b"fake video bytes")
    (root / "ignored.bin").write_bytes(b"\0")
    return root


def index_once(source: Path, out: Path, shard=(0, 1), embedder=None, **options):
    store = Store(out, shard)
    job = JobOptions("m", rows_per_shard=options.pop("rows_per_shard", 3), **options)
    store.open(job.settings())
    plan = make_plan(records(source), store, shard)
    embedder = embedder or FakeEmbedder()
    report = run(plan, store, embedder, job)
    return plan, report, embedder


def snapshot(out: Path):
    index = read_index(out)
    return index.ids, index.hashes, index.vectors, [(e.id, e.reason) for e in index.errors]


def test_content_hash_covers_every_part_and_not_the_name():
    base = content_hash("a", (b"x",), (), None)
    assert base == content_hash("a", (b"x",), (), None)
    others = {
        content_hash("a", (), (b"x",), None),  # same bytes as a video
        content_hash("ax", (), (), None),
        content_hash("a", (b"x",), (), "task"),
        content_hash(None, (b"x",), (), None),
        content_hash("a", (b"x", b""), (), None),
    }
    assert base not in others and len(others) == 5


def test_remembered_file_digests_give_the_loaded_hash_without_reading_again(folder, monkeypatch):
    digests = FileDigests()
    found = list(records(folder))
    for record in found:
        assert digests.content_hash(record) == record.load().content_hash
    assert digests.changed
    remembered = FileDigests(json.loads(json.dumps(digests.known)))
    reads = []
    for name in ("read_bytes", "read_text"):
        real = getattr(Path, name)
        monkeypatch.setattr(
            Path, name, lambda self, *a, real=real, **k: reads.append(self) or real(self, *a, **k)
        )
    assert [remembered.content_hash(r) for r in found] == [digests.content_hash(r) for r in found]
    assert reads == [] and not remembered.changed
    note = folder / "note0.txt"
    note.write_text("note number 0 changed")  # another size: read again
    changed = next(r for r in found if r.id == "note0.txt")
    assert remembered.content_hash(changed) == changed.load().content_hash and remembered.changed


def test_shards_split_ids_deterministically_and_completely():
    ids = [f"item-{number}" for number in range(300)]
    parts = [[i for i in ids if shard_of(i, 3) == part] for part in range(3)]
    assert sorted(sum(parts, [])) == sorted(ids)
    assert all(60 < len(part) < 140 for part in parts)
    # Stable across runs and machines: a fixed function of the id's SHA-256.
    assert shard_of("item-0", 3) == int.from_bytes(hashlib.sha256(b"item-0").digest()[:8], "big") % 3
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "1", "-1/2", "a/b", "0/0"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_folder_and_table_records(folder, tmp_path):
    found = {record.id: record for record in records(folder)}
    assert "ignored.bin" not in found and found["pic.png"].modality == "image"
    assert found["clip.mp4"].modality == "video" and found["sub/copy-of-note3.md"].modality == "text"
    table = tmp_path / "items.jsonl"
    table.write_text(
        json.dumps({"id": "a", "text": "hello", "image": "corpus/pic.png", "instruction": "find"})
        + "\n\n"
        + json.dumps({"id": 2, "videos": ["corpus/clip.mp4"]})
        + "\n"
    )
    rows = list(records(table))
    assert [row.id for row in rows] == ["a", "2"]
    assert rows[0].modality == "text+image" and rows[0].images == (tmp_path / "corpus" / "pic.png",)
    assert rows[0].load().content_hash != Record("b", text="hello", images=rows[0].images).load().content_hash
    csv_table = tmp_path / "items.csv"
    csv_table.write_text("id,text,image,video\nx,,corpus/pic.png;corpus/pic.png,\ny,words,,\n")
    rows = list(records(csv_table))
    assert rows[0].modality == "image" and len(rows[0].images) == 2 and rows[1].text == "words"
    (tmp_path / "noid.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(SourceError, match="no id"):
        list(records(tmp_path / "noid.jsonl"))
    with pytest.raises(SourceError):
        list(records(tmp_path / "missing"))


def test_a_table_is_indexed_like_a_folder(folder, tmp_path):
    table = folder.parent / "items.csv"
    table.write_text(
        "id,text,image,video,instruction\n"
        "q1,a red car,,,Find the picture\n"
        "d1,a caption,corpus/pic.png,,\n"
        "v1,,,corpus/clip.mp4,\n"
        "gone,,corpus/missing.png,,\n"
    )
    out = tmp_path / "out"
    index_once(table, out)
    index = read_index(out)
    assert index.ids == ["d1", "q1", "v1"] and index.modalities == ["text+image", "text", "video"]
    assert [(error.id, error.content_hash) for error in index.errors] == [("gone", None)]
    assert index.errors[0].reason.startswith("cannot read file:")
    expected = FakeEmbedder().embed([Item(text="a red car", instruction="Find the picture")], 0).vectors
    np.testing.assert_allclose(index.vectors[1], expected[0], atol=1e-7)


def test_one_run_indexes_each_item_once_copies_duplicates_and_records_bad_items(folder, tmp_path):
    out = tmp_path / "out"
    plan, report, embedder = index_once(folder, out)
    ids, hashes, vectors, errors = snapshot(out)
    assert len(ids) == len(set(ids)) == 13 and "bad.txt" not in ids
    assert errors == [("bad.txt", "text is not allowed here")]
    assert len(embedder.sent) == 13  # 14 items, one a copy of another
    row = {identifier: number for number, identifier in enumerate(ids)}
    np.testing.assert_array_equal(vectors[row["note3.txt"]], vectors[row["sub/copy-of-note3.md"]])
    assert report.usage.counters["text"]["reused"] == 1 and report.usage.counters["text"]["failed"] == 1
    assert report.usage.counters["image"]["tokens"] == 7
    lines = (out / "errors.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["bad.txt"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(entry["rows"] for entry in manifest["shards"]) == 13
    # A second run finds everything done: nothing is sent, nothing is written.
    again = FakeEmbedder()
    plan, _, _ = index_once(folder, out, embedder=again)
    assert (plan.done, plan.known_errors, plan.pending, again.sent) == (13, 1, [], [])
    assert snapshot(out)[0] == ids


def test_renamed_changed_and_removed_files_on_rerun(folder, tmp_path):
    out = tmp_path / "out"
    index_once(folder, out)
    (folder / "note1.txt").rename(folder / "renamed.txt")
    (folder / "note2.txt").write_text("changed text")
    (folder / "note4.txt").unlink()
    embedder = FakeEmbedder()
    index_once(folder, out, embedder=embedder)
    assert len(embedder.sent) == 1  # only the changed file; the renamed one is copied
    fresh = tmp_path / "fresh"
    index_once(folder, fresh)
    before, after = snapshot(out), snapshot(fresh)
    assert before[0] == after[0] and before[1] == after[1] and before[3] == after[3]
    np.testing.assert_array_equal(before[2], after[2])


@pytest.mark.parametrize("dtype", ["float16", "int8", "ubinary"])
def test_vectors_are_stored_in_the_chosen_type(folder, tmp_path, dtype):
    out = tmp_path / dtype
    index_once(folder, out, dtype=dtype, dimensions=8)
    index = read_index(out)
    full = FakeEmbedder().embed([Item(text="note number 0")], 8).vectors
    expected = compact(full, dtype, 8, index.settings["range"])
    np.testing.assert_array_equal(index.vectors[index.ids.index("note0.txt")], expected[0])
    assert index.settings["width"] == 8 and index.vectors.dtype == expected.dtype


def test_settings_of_a_directory_cannot_change(folder, tmp_path):
    out = tmp_path / "out"
    index_once(folder, out)
    with pytest.raises(StoreError, match="dtype"):
        Store(out).open(JobOptions("m", dtype="int8").settings())
    with pytest.raises(StoreError, match="1-way split"):
        Store(out, (0, 2)).open(JobOptions("m").settings())
    shared = tmp_path / "shared"
    index_once(folder, shared, shard=(0, 2))
    with pytest.raises(StoreError, match=r"manifest.0-of-2.json\) was indexed with dtype"):
        Store(shared, (1, 2)).open(JobOptions("m", dtype="int8").settings())


def test_resume_after_a_crash_at_every_write_is_exact(folder, tmp_path, monkeypatch):
    real_replace = store_module.os.replace
    writes = []

    def counting(source, target):
        writes.append(Path(target).name)
        return real_replace(source, target)

    monkeypatch.setattr(store_module.os, "replace", counting)
    reference = tmp_path / "reference"
    index_once(folder, reference)
    expected = snapshot(reference)
    assert len(writes) >= 10  # 5 shards: a shard, the manifest and the errors file each
    for crash_at in range(1, len(writes) + 1):
        out = tmp_path / f"crash{crash_at}"
        calls = {"n": 0}

        def replace(source, target, calls=calls, crash_at=crash_at):
            calls["n"] += 1
            if calls["n"] == crash_at:
                raise Killed
            return real_replace(source, target)

        monkeypatch.setattr(store_module.os, "replace", replace)
        with pytest.raises(Killed):
            index_once(folder, out)
        monkeypatch.setattr(store_module.os, "replace", real_replace)
        # A write killed between the shard's rename and the manifest's leaves an orphan shard file.
        (out / "vectors.999999.npz").write_bytes(b"half")
        (out / ".tmp-manifest.json.x").write_bytes(b"half")
        embedder = FakeEmbedder()
        plan, _, _ = index_once(folder, out, embedder=embedder)
        got = snapshot(out)
        assert got[0] == expected[0] and got[1] == expected[1] and got[3] == expected[3]
        np.testing.assert_array_equal(got[2], expected[2])
        assert not (out / "vectors.999999.npz").exists() and not (out / ".tmp-manifest.json.x").exists()
        assert len(embedder.sent) <= len(plan.pending)
        assert json.loads((out / "errors.jsonl").read_text().strip())["id"] == "bad.txt"


def test_a_rerun_that_drops_rows_is_exact_after_a_crash_at_every_write(folder, tmp_path, monkeypatch):
    first = tmp_path / "first"
    index_once(folder, first)
    (folder / "note1.txt").rename(folder / "renamed.txt")
    (folder / "note2.txt").write_text("changed text")
    (folder / "note4.txt").unlink()
    (folder / "bad.txt").write_text("no longer bad")
    expected = tmp_path / "expected"
    index_once(folder, expected)
    real_replace = store_module.os.replace
    crash_at, crashed = 1, True
    while crashed:
        out = tmp_path / f"rerun{crash_at}"
        shutil.copytree(first, out)
        calls = {"n": 0}

        def replace(source, target, calls=calls, crash_at=crash_at):
            calls["n"] += 1
            if calls["n"] == crash_at:
                raise Killed
            return real_replace(source, target)

        monkeypatch.setattr(store_module.os, "replace", replace)
        try:
            index_once(folder, out)
            crashed = False  # past the rerun's last write
        except Killed:
            pass
        monkeypatch.setattr(store_module.os, "replace", real_replace)
        index_once(folder, out)
        got, want = snapshot(out), snapshot(expected)
        assert got[0] == want[0] and got[1] == want[1] and got[3] == want[3] == []
        np.testing.assert_array_equal(got[2], want[2])
        crash_at += 1
    assert crash_at > 5


def test_a_run_killed_mid_chunk_sends_only_what_was_not_committed(folder, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(Killed):
        index_once(folder, out, embedder=FakeEmbedder(fail_after=7))
    committed = len(read_index(out).ids)
    assert 0 < committed < 13
    embedder = FakeEmbedder()
    index_once(folder, out, embedder=embedder)
    # Of the 14 items, one is a copy: what the first run committed is not sent again.
    assert len(embedder.sent) <= 14 - committed
    assert len(read_index(out).ids) == 13


def test_shard_workers_share_a_directory_and_their_union_is_the_whole(folder, tmp_path):
    single = tmp_path / "single"
    index_once(folder, single)
    shared = tmp_path / "shared"
    for part in range(3):
        index_once(folder, shared, shard=(part, 3))
    assert sorted(path.name for path in shared.glob("manifest*")) == [
        f"manifest.{part}-of-3.json" for part in range(3)
    ]
    whole, parts = snapshot(single), snapshot(shared)
    assert whole[0] == parts[0] and whole[1] == parts[1] and whole[3] == parts[3]
    np.testing.assert_array_equal(whole[2], parts[2])


def test_progress_line():
    assert progress_line(50, 200, 10.0, 1, 0) == "index 50/200 (25%)  5.0 items/s  ETA 0:00:30  failed 1"
    assert "ETA ?" in progress_line(0, 10, 0.0, 0, 0)
    assert progress_line(10, 10, 2.0, 0, 700).endswith("350 tokens/s")


class ThreadRecordingEmbedder(FakeEmbedder):
    """Records the threads that embed and close: the HTTP client's gevent pool works only in the thread
    that made it (closed from another thread it raised LoopExit)."""

    def __init__(self, fail_after: int | None = None):
        super().__init__(fail_after)
        self.threads: set[str] = set()
        self.closed_in: list[str] = []
        self.twins: list[ThreadRecordingEmbedder] = []

    def twin(self) -> ThreadRecordingEmbedder:
        twin = ThreadRecordingEmbedder(self.fail_after)
        twin.sent = self.sent  # one server
        self.twins.append(twin)
        return twin

    def embed(self, items: list[Item], dimensions: int) -> EmbedOutcome:
        self.threads.add(threading.current_thread().name)
        return super().embed(items, dimensions)

    def close(self) -> None:
        self.closed_in.append(threading.current_thread().name)


@pytest.mark.parametrize("fail_after", [None, 7])
def test_each_embedder_is_used_and_closed_in_one_thread_ahead_of_the_commits(folder, tmp_path, fail_after):
    """Two chunks are embedded at once, by the embedder and its twin, each in a thread of its own."""
    embedder = ThreadRecordingEmbedder(fail_after)
    if fail_after is None:
        index_once(folder, tmp_path / "out", embedder=embedder)
    else:
        with pytest.raises(Killed):
            index_once(folder, tmp_path / "out", embedder=embedder)
    assert len(embedder.twins) == CHUNKS_AT_ONCE - 1
    threads = set()
    for each in [embedder, *embedder.twins]:
        assert len(each.threads) == 1 and each.threads != {threading.current_thread().name}
        assert each.closed_in == list(each.threads)
        threads |= each.threads
    assert len(threads) == CHUNKS_AT_ONCE
