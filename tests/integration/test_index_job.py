"""``qwen3vl index`` against the real server: a mixed folder indexed once, the same job SIGKILLed again and
again and resumed, and two ``--shard`` workers sharing one directory, all ending in the same index."""

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

from qwen3vl_client.bulk.store import read_index
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
    # On a quiet machine the whole job can finish inside one kill window: start over in a fresh directory
    # (a few times at most) rather than pass without the kills the test is about.
    for attempt in range(5):
        out = tmp_path / f"killed-{attempt}"
        if kill_repeatedly(server, corpus, out, rng) == KILLS:
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
    # No leftovers: only the listed shards, the manifest, the errors file and the digest cache.
    assert sorted(os.listdir(out)) == sorted(listed | {"manifest.json", "errors.jsonl", "digests.json"})


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
