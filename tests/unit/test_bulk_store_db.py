"""Parquet shards and tables, directories of ``.npz`` shards from before Parquet, the usage report, and the
vector database (a real Milvus Lite file) that the job keeps level with its shards and ``search`` queries."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qwen3vl_client.bulk.job import JobOptions, make_plan, run, usage_table
from qwen3vl_client.bulk.search import search, search_vectors
from qwen3vl_client.bulk.sources import records
from qwen3vl_client.bulk.store import Rows, Store, read_index, write_rows
from qwen3vl_client.bulk.vectordb import DatabaseError, Mirror, VectorDatabase, resolve_uri
from qwen3vl_client.items import Item
from tests.unit.test_bulk_job import WIDTH, FakeEmbedder, make_folder, snapshot
from tools import synthetic


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_folder(tmp_path / "corpus")


def index_with_database(source: Path, out: Path, shard=(0, 1), embedder=None, **options):
    """A run as ``qwen3vl index`` does it: shards, and every chunk upserted into the worker's Lite file."""
    store = Store(out, shard)
    job = JobOptions("m", rows_per_shard=options.pop("rows_per_shard", 3), **options)
    manifest = store.open(job.settings())
    plan = make_plan(records(source), store, shard)
    tag = "" if shard == (0, 1) else f".{shard[0]}-of-{shard[1]}"
    uri = resolve_uri(None, out, tag)
    assert uri is not None
    manifest.database = {"uri": Path(uri).name, "collection": "qwen3vl_index"}
    with VectorDatabase(uri) as database:
        report = run(plan, store, embedder or FakeEmbedder(), job, mirror=Mirror(database, shard, plan.paths))
        held = database.keys(f"{shard[0]}/{shard[1]}")
    return plan, report, held


def test_shards_are_parquet_with_the_documented_columns(folder, tmp_path):
    out = tmp_path / "out"
    index_with_database(folder, out, dtype="int8", dimensions=8)
    shards = sorted(out.glob("vectors.*"))
    assert shards and all(path.suffix == ".parquet" for path in shards)
    table = pq.read_table(shards[0])
    assert table.column_names == [
        "id",
        "content_hash",
        "modality",
        "dimensions",
        "dtype",
        "vector",
        "token_count",
    ]
    assert table.schema.field("vector").type == pa.list_(pa.int8(), 8)
    assert set(table.column("dtype").to_pylist()) == {"int8"} and set(
        table.column("token_count").to_pylist()
    ) == {7}


def test_a_directory_of_npz_shards_is_still_read_and_grows_in_parquet(folder, tmp_path):
    out = tmp_path / "out"
    index_with_database(folder, out)
    reference = snapshot(out)
    # Rewrite the shards as the previous version wrote them (.npz), then add a file to the source.
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["shards"]:
        parquet = out / entry["file"]
        rows = read_index_rows(parquet)
        entry["file"] = parquet.with_suffix(".npz").name
        write_rows(out / entry["file"], rows)
        parquet.unlink()
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert snapshot(out)[0] == reference[0]
    np.testing.assert_array_equal(snapshot(out)[2], reference[2])
    (folder / "new.txt").write_text("a new note")
    embedder = FakeEmbedder()
    index_with_database(folder, out, embedder=embedder)
    assert len(embedder.sent) == 1
    suffixes = sorted(path.suffix for path in out.glob("vectors.*"))
    assert ".npz" in suffixes and suffixes.count(".parquet") == 1
    assert len(read_index(out).ids) == len(reference[0]) + 1


def read_index_rows(path: Path) -> Rows:
    from qwen3vl_client.bulk.store import read_rows

    return read_rows(path, WIDTH, "float32")


def test_a_parquet_table_with_paths_and_bytes(folder, tmp_path):
    photo = synthetic.encode_image(synthetic.photo(32, 24, seed=3), "PNG")
    table = pa.table(
        {
            "id": ["p", "b", "t"],
            "text": [None, "caption", "only words"],
            "image": ["corpus/pic.png", None, None],
            "images": [None, [photo], None],
            "instruction": [None, None, "Find it"],
        }
    )
    path = tmp_path / "items.parquet"
    pq.write_table(table, path)
    found = list(records(path))
    assert [record.id for record in found] == ["p", "b", "t"]
    assert [record.modality for record in found] == ["image", "text+image", "text"]
    assert found[0].path == tmp_path / "corpus" / "pic.png" and found[1].path is None
    assert found[1].load().images == (photo,) and found[2].instruction == "Find it"
    out = tmp_path / "out"
    index_with_database(path, out)
    assert read_index(out).ids == ["b", "p", "t"]
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="not a readable Parquet table"):
        list(records(tmp_path / "broken.parquet"))


def test_usage_counts_tokens_images_video_seconds_and_model_seconds(folder, tmp_path):
    (folder / "clip.mp4").write_bytes(synthetic.video(seconds=2, fps=4, width=32, height=32, seed=0))
    _, report, _ = index_with_database(folder, tmp_path / "out")
    usage = report.usage.as_dict()
    assert usage["image"]["images"] == 1 and usage["image"]["tokens"] == 7
    assert usage["video"]["video_seconds"] == pytest.approx(2.0, abs=0.3)
    assert all(counts["model_seconds"] >= 0 for counts in usage.values())
    table = usage_table(usage)
    assert table.splitlines()[0].split() == [
        "modality",
        "items",
        "embedded",
        "reused",
        "failed",
        "tokens",
        "images",
        "video",
        "s",
        "model",
        "s",
    ]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["usage"]["video"]["video_seconds"] == usage["video"]["video_seconds"]


def test_the_database_follows_the_shards_and_search_finds_the_items(folder, tmp_path):
    out = tmp_path / "out"
    _, _, held = index_with_database(folder, out)
    index = read_index(out)
    assert held == dict(zip(index.ids, index.hashes))
    assert (out / "milvus.db").exists()
    row = index.ids.index("note5.txt")
    hits = search(out, index.vectors[row], k=3)
    assert hits[0].id == "note5.txt" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].modality == "text" and hits[0].path == str((folder / "note5.txt").absolute())
    # Brute force over the shards gives the same ranking.
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["database"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert [hit.id for hit in search_vectors(out, index.vectors[row][None], 3)[0]] == [hit.id for hit in hits]
    with pytest.raises(ValueError, match="needs an EmbeddingClient"):
        search(out, "a query", 3)
    assert search(out, Item(text="x"), 3, client=QueryClient(index.vectors[row]))[0].id == "note5.txt"


class QueryClient:
    """Stands for ``EmbeddingClient``: every query is ``vector``."""

    def __init__(self, vector: np.ndarray):
        self.vector = vector

    def embed_queries(self, items, task, dimensions=None):
        return np.stack([self.vector] * len(items))


def test_rerun_after_changes_and_a_lost_upsert_reconciles_the_database(folder, tmp_path):
    out = tmp_path / "out"
    index_with_database(folder, out)
    (folder / "note1.txt").rename(folder / "renamed.txt")
    (folder / "note2.txt").write_text("changed text")
    (folder / "note4.txt").unlink()
    with VectorDatabase(str(out / "milvus.db")) as database:
        database.delete(["note6.txt"])  # as if a run was killed between a shard's commit and its upsert
    _, _, held = index_with_database(folder, out)
    index = read_index(out)
    assert held == dict(zip(index.ids, index.hashes))
    assert "note4.txt" not in held and "renamed.txt" in held and "note6.txt" in held


def test_workers_each_keep_their_own_lite_file_and_search_merges_them(folder, tmp_path):
    single, shared = tmp_path / "single", tmp_path / "shared"
    index_with_database(folder, single)
    for part in range(3):
        index_with_database(folder, shared, shard=(part, 3))
    assert sorted(path.name for path in shared.glob("milvus*.db")) == [
        f"milvus.{part}-of-3.db" for part in range(3)
    ]
    index = read_index(single)
    for row in (0, 5, 11):
        want = search(single, index.vectors[row], k=4)
        got = search(shared, index.vectors[row], k=4)
        assert [hit.id for hit in got] == [hit.id for hit in want]
        np.testing.assert_allclose([hit.score for hit in got], [hit.score for hit in want], atol=1e-5)


def test_database_uris(tmp_path):
    assert resolve_uri(None, tmp_path, "") == str((tmp_path / "milvus.db").resolve())
    assert resolve_uri(None, tmp_path, ".1-of-2") == str((tmp_path / "milvus.1-of-2.db").resolve())
    assert resolve_uri("none", tmp_path, "") is None
    assert resolve_uri("http://milvus.example", tmp_path, "") == "http://milvus.example:19530"
    assert resolve_uri("https://db.example:443/", tmp_path, "") == "https://db.example:443"
    assert resolve_uri("elsewhere/v.db", tmp_path, "") == str(Path("elsewhere/v.db").resolve())
    for bad in ("ftp://host", "milvus:19530", "http://host/path", "http://host:port", "http://"):
        with pytest.raises(ValueError, match="--db-uri"):
            resolve_uri(bad, tmp_path, "")


def test_an_unreachable_server_is_one_clear_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once closed
    started = time.monotonic()
    with pytest.raises(DatabaseError, match=f"cannot reach the vector database at http://127.0.0.1:{port}"):
        VectorDatabase(f"http://127.0.0.1:{port}", timeout=2)
    assert time.monotonic() - started < 15


def test_a_collection_of_another_width_is_refused(tmp_path):
    with VectorDatabase(str(tmp_path / "v.db")) as database:
        database.ensure(8)
        database.ensure(8)
        with pytest.raises(DatabaseError, match="holds 8-wide vectors, not 16"):
            database.ensure(16)


def test_dry_run_estimates_tokens_from_the_directorys_earlier_runs(folder, tmp_path):
    from qwen3vl_client.bulk.job import dry_run_text

    out = tmp_path / "out"
    index_with_database(folder, out)
    for number in range(4):
        (folder / f"more{number}.txt").write_text(f"one more note {number}")
    store = Store(out)
    store.open(JobOptions("m").settings(), create=False)
    plan = make_plan(records(folder), store, (0, 1))
    text = dry_run_text(plan, store, folder)
    assert "to do 4" in text and "to do by modality: text 4" in text
    assert "estimate 28 tokens" in text  # the fake server's 7 tokens per text item, four times


def test_search_while_a_job_holds_the_lite_file_answers_from_the_shards(folder, tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    out = tmp_path / "out"
    index_with_database(folder, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["source"] = str(folder)
    (out / "manifest.json").write_text(json.dumps(manifest))
    index = read_index(out)
    row = index.ids.index("sub/copy-of-note3.md")
    expected = search(out, index.vectors[row], k=4)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from qwen3vl_client.bulk.vectordb import VectorDatabase\n"
            f"database = VectorDatabase({str(out / 'milvus.db')!r})\n"
            "print('open', flush=True)\n"
            "time.sleep(60)\n",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(DatabaseError, match="another process may have it open"):
            VectorDatabase(str(out / "milvus.db"))
        hits = search(out, index.vectors[row], k=4)
    finally:
        holder.kill()
        holder.wait()
    assert [(hit.id, hit.modality, hit.content_hash) for hit in hits] == [
        (hit.id, hit.modality, hit.content_hash) for hit in expected
    ]
    np.testing.assert_allclose([hit.score for hit in hits], [hit.score for hit in expected], atol=1e-5)
    assert hits[0].path == str(folder / hits[0].id)
