"""``qwen3vl index`` against the real server: a mixed folder indexed once, the same job SIGKILLed again and
again and resumed, two ``--shard`` workers sharing one directory, and three workers started as the Helm
chart's Indexed Job starts them, all ending in the same index and the same vector database rows, searched by
``qwen3vl search QUERY --index DIR``."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from qwen3vl_client.bulk.search import search
from qwen3vl_client.bulk.store import read_index
from qwen3vl_client.bulk.vectordb import VectorDatabase, lite_files
from qwen3vl_client.cli import main
from tests.conftest import REPO
from tools import synthetic

pytestmark = pytest.mark.server

ROWS_PER_SHARD = "3"
KILLS = 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """20 texts (one twice, under two names), 5 photos, a screenshot, 2 clips and a file that is no image."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "texts").mkdir()
    (root / "media").mkdir()
    for number in range(20):
        (root / "texts" / f"note{number:02d}.txt").write_text(
            f"Note {number}: the capital of China is Beijing."
        )
    (root / "texts" / "copy-of-note03.md").write_text((root / "texts" / "note03.txt").read_text())
    for number in range(5):
        photo = synthetic.photo(64 + 8 * number, 48, seed=number)
        (root / "media" / f"photo{number}.jpg").write_bytes(synthetic.encode_image(photo, "JPEG", quality=85))
    (root / "media" / "screen.png").write_bytes(
        synthetic.encode_image(synthetic.screenshot(160, 120, seed=1))
    )
    for number in range(2):
        clip = synthetic.video(seconds=1, fps=4, width=48, height=48, seed=number)
        (root / "media" / f"clip{number}.mp4").write_bytes(clip)
    (root / "media" / "broken.png").write_bytes(b"not an image at all")
    return root


def command(server, corpus: Path, out: Path, *extra: str) -> list[str]:
    return [
        "index",
        str(corpus),
        "--out",
        str(out),
        "--url",
        server.http_url,
        "--rows-per-shard",
        ROWS_PER_SHARD,
        "--batch-size",
        "2",
        *extra,
    ]


def spawn(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'client'}"}
    return subprocess.Popen(
        [sys.executable, "-m", "qwen3vl_client", *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def committed_rows(out: Path) -> int:
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return 0
    return sum(entry["rows"] for entry in manifest["shards"])


@pytest.fixture(scope="module")
def reference(server, corpus, tmp_path_factory):
    """One uninterrupted run, in process; its JSON report."""
    out = tmp_path_factory.mktemp("reference")
    from io import StringIO
    from unittest import mock

    captured = StringIO()
    with mock.patch("sys.stdout", captured):
        assert main(command(server, corpus, out, "--json", "--no-progress")) == 0
    return out, json.loads(captured.getvalue())


def assert_same_index(expected: Path, got: Path) -> None:
    want, have = read_index(expected), read_index(got)
    assert have.ids == want.ids and len(set(have.ids)) == len(have.ids)
    assert have.hashes == want.hashes and have.modalities == want.modalities
    np.testing.assert_allclose(have.vectors, want.vectors, atol=1e-6, rtol=0)
    assert [(e.id, e.reason) for e in have.errors] == [(e.id, e.reason) for e in want.errors]
    np.testing.assert_array_equal(have.token_counts, want.token_counts)
    assert database_rows(got) == dict(zip(have.ids, have.hashes))


def database_rows(out: Path) -> dict[str, str]:
    """id -> content hash of every row in the index's Milvus Lite files (all workers)."""
    rows: dict[str, str] = {}
    for path in lite_files(out):
        shard = path.name.removeprefix("milvus").removesuffix(".db").lstrip(".").replace("-of-", "/") or "0/1"
        with VectorDatabase(str(path)) as database:
            found = database.keys(shard)
        assert not set(found) & set(rows), "an id in two workers' databases"
        rows.update(found)
    return rows


def test_one_run_indexes_the_mixed_folder(reference):
    out, report = reference
    index = read_index(out)
    assert len(index.ids) == 29 and "media/broken.png" not in index.ids
    assert [error.id for error in index.errors] == ["media/broken.png"]
    assert report["embedded"] == 28  # the copy of note03 is not sent
    usage = report["usage"]
    assert usage["text"]["items"] == 21 and usage["text"]["reused"] == 1
    assert usage["image"]["items"] == 6 and usage["image"]["failed"] == 1 and usage["video"]["items"] == 2
    np.testing.assert_allclose(np.linalg.norm(index.vectors, axis=1), 1.0, atol=1e-5)
    row = {identifier: number for number, identifier in enumerate(index.ids)}
    np.testing.assert_array_equal(
        index.vectors[row["texts/note03.txt"]], index.vectors[row["texts/copy-of-note03.md"]]
    )
    # The server's TOKEN_COUNT for every row, and in the usage report by modality.
    assert (index.token_counts > 0).all()
    assert usage["text"]["tokens"] == int(
        sum(index.token_counts[i] for i, m in enumerate(index.modalities) if m == "text")
    )
    assert usage["image"]["images"] == 6 and usage["video"]["video_seconds"] == pytest.approx(2.0, abs=0.5)
    assert all(usage[modality]["model_seconds"] > 0 for modality in ("text", "image", "video"))
    assert report["database"] == {"uri": "milvus.db", "collection": "qwen3vl_index"}
    assert database_rows(out) == dict(zip(index.ids, index.hashes))
    print(f"index: {report['items_per_second']} items/s over {report['seconds']} s")


def kill_repeatedly(server, corpus: Path, out: Path, rng: random.Random) -> int:
    """Start the job and SIGKILL it once it has committed something new, at a random moment inside the next
    chunk, KILLS times; how many kills landed before the job finished on its own."""
    kills = 0
    while kills < KILLS:
        before = committed_rows(out)
        process = spawn(command(server, corpus, out, "--no-progress"))
        deadline = time.monotonic() + 30
        while process.poll() is None and committed_rows(out) == before and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.05))
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
    return kills


def test_sigkilled_again_and_again_then_resumed_equals_one_run(server, corpus, reference, tmp_path):
    rng = random.Random(20)
    # On a quiet machine the whole job can finish inside one kill window (the next chunk is embedded while
    # one is committed), or the last kill land after its last commit: start over in a fresh directory (a few
    # times at most) rather than pass without the kills the test is about.
    for attempt in range(5):
        out = tmp_path / f"killed-{attempt}"
        if kill_repeatedly(server, corpus, out, rng) == KILLS and committed_rows(out) < 29:
            break
    else:
        pytest.fail("the job finished before it was killed often enough, 5 times over")
    assert 0 < committed_rows(out) < 29
    final = spawn(command(server, corpus, out, "--no-progress", "--json"))
    stdout, stderr = final.communicate(timeout=120)
    assert final.returncode == 0, stderr.decode()
    report = json.loads(stdout)
    assert report["already_indexed"] + report["embedded"] <= 29
    assert_same_index(reference[0], out)
    listed = {entry["file"] for entry in json.loads((out / "manifest.json").read_text())["shards"]}
    # No leftovers: only the listed shards, the manifest, the errors file, the digest cache and the database.
    assert sorted(os.listdir(out)) == sorted(
        listed | {"manifest.json", "errors.jsonl", "digests.json", "milvus.db"}
    )


def test_two_shard_workers_build_the_same_index(server, corpus, reference, tmp_path):
    out = tmp_path / "shared"
    workers = [
        spawn(command(server, corpus, out, "--shard", f"{part}/2", "--no-progress")) for part in range(2)
    ]
    for worker in workers:
        _, stderr = worker.communicate(timeout=120)
        assert worker.returncode == 0, stderr.decode()
    assert sorted(path.name for path in out.glob("manifest*")) == [
        "manifest.0-of-2.json",
        "manifest.1-of-2.json",
    ]
    assert_same_index(reference[0], out)


def test_search_an_index_by_vector_and_from_the_cli(server, corpus, reference, capsys):
    out = reference[0]
    index = read_index(out)
    row = index.ids.index("media/photo2.jpg")
    hits = search(out, index.vectors[row], k=3)
    assert hits[0].id == "media/photo2.jpg" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].modality == "image" and Path(hits[0].path).samefile(corpus / "media" / "photo2.jpg")
    argv = ["search", "a note about Beijing", "--index", str(out), "-k", "4", "--url", server.http_url]
    assert main([*argv, "--json"]) == 0
    (answer,) = json.loads(capsys.readouterr().out)
    assert answer["query"] == "a note about Beijing" and len(answer["results"]) == 4
    assert all(result["id"] in index.ids for result in answer["results"])
    scores = [result["score"] for result in answer["results"]]
    assert scores == sorted(scores, reverse=True)
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("a note about Beijing") and lines[1].split()[1] == answer["results"][0]["id"]


def test_the_chart_indexed_job_three_local_workers_build_one_index(server, corpus, reference, tmp_path):
    """The Helm chart's Indexed Job, run here: its container args for pods 0, 1 and 2 (the completion index
    substituted as the kubelet does, the mounts and the Triton service replaced by local ones), at once."""
    import yaml

    from deploy.render import Variant, merge, render_chart, variant_values

    values = merge(
        variant_values(Variant("2b", "cpu")),
        {"indexJob": {"enabled": True, "workers": 3, "source": {"claim": "c"}, "output": {"claim": "o"}}},
    )
    job = yaml.safe_load(render_chart(values)["index-job.yaml"])
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "qwen3vl_client"]
    out = tmp_path / "index"
    local = {"/corpus": str(corpus), "/index": str(out), "qwen3vl-qwen3-vl:8001": server.grpc_url}
    workers = []
    for pod in range(3):
        argv = [local.get(arg, arg).replace("$(JOB_COMPLETION_INDEX)", str(pod)) for arg in container["args"]]
        workers.append(spawn([*argv, "--rows-per-shard", ROWS_PER_SHARD, "--batch-size", "2"]))
    for worker in workers:
        _, stderr = worker.communicate(timeout=180)
        assert worker.returncode == 0, stderr.decode()
    assert sorted(path.name for path in lite_files(out)) == [f"milvus.{pod}-of-3.db" for pod in range(3)]
    assert_same_index(reference[0], out)
    index = read_index(out)
    for row in (0, 10, 25):
        want = [hit.id for hit in search(reference[0], index.vectors[row], k=5)]
        assert [hit.id for hit in search(out, index.vectors[row], k=5)] == want


def test_an_unreachable_database_server_stops_the_job_with_one_line(server, corpus, tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    worker = spawn(command(server, corpus, tmp_path / "out", "--db-uri", f"http://127.0.0.1:{port}"))
    _, stderr = worker.communicate(timeout=120)
    assert worker.returncode == 1
    assert f"qwen3vl index: cannot reach the vector database at http://127.0.0.1:{port}" in stderr.decode()
    assert not list((tmp_path / "out").glob("vectors.*"))  # nothing embedded before the database answers
