"""The bulk job's way to the server, with a stand-in client: concurrency halves while the server stays
unavailable and grows back after clean chunks; other failures end as per-item errors, never as a crash."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from qwen3vl_client.bulk import embedder as embedder_module
from qwen3vl_client.bulk.embedder import ClientEmbedder
from qwen3vl_client.cli import main
from qwen3vl_client.errors import ItemError, RequestError, ServerUnavailableError
from qwen3vl_client.items import Item
from qwen3vl_client.results import EmbeddingResult


class StandIn:
    """``embed`` answers from a script: an exception to raise, or None for a good answer."""

    def __init__(self, script: list, opened: list[int], concurrency: int):
        self.script = script
        opened.append(concurrency)

    def embed(self, items, dimensions=None, on_error="raise"):
        step = self.script.pop(0) if self.script else None
        if step is not None:
            raise step
        vectors = np.ones((len(items), 4), dtype=np.float32) / 2
        errors = tuple(ItemError(i, "x", "too long") for i, item in enumerate(items) if item.text == "long")
        return EmbeddingResult(vectors, errors)

    def close(self) -> None:
        pass


def make(script: list, concurrency: int = 8):
    opened: list[int] = []
    pauses: list[float] = []
    embedder = ClientEmbedder(
        lambda c: StandIn(script, opened, c), concurrency, sleep=pauses.append, log=lambda line: None
    )
    return embedder, opened, pauses


def unavailable() -> ServerUnavailableError:
    return ServerUnavailableError([0], "server unavailable after 5 attempts", "503")


def test_unavailable_halves_concurrency_waits_longer_each_time_then_grows_back():
    embedder, opened, pauses = make([unavailable(), unavailable(), unavailable()])
    outcome = embedder.embed([Item(text="a"), Item(text="long")], 0)
    assert opened == [8, 4, 2, 1] and pauses == [1.0, 2.0, 4.0]
    assert outcome.errors == {1: "too long"} and outcome.vectors.shape == (2, 4)
    for _ in range(embedder_module.GROW_AFTER):
        embedder.embed([Item(text="a")], 0)
    assert embedder.concurrency == 2 and embedder.wait == 1.0


def test_a_request_that_keeps_failing_is_tried_again_then_item_by_item():
    failure = RequestError([0, 1], "INTERNAL: boom", "500")
    attempts = embedder_module.REQUEST_ATTEMPTS
    # The chunk fails every time; then alone, the first item succeeds and the second fails every time.
    script = [failure] * attempts + [None] + [failure] * attempts
    embedder, _, pauses = make(script)
    outcome = embedder.embed([Item(text="a"), Item(text="b")], 0)
    assert outcome.errors == {1: "INTERNAL: boom"}
    np.testing.assert_array_equal(outcome.vectors[0], [0.5] * 4)
    assert len(pauses) == 2 * (attempts - 1)


def test_dry_run_counts_without_a_server_or_a_directory(tmp_path: Path, capsys):
    (tmp_path / "corpus").mkdir()
    for number in range(4):
        (tmp_path / "corpus" / f"{number}.txt").write_text(f"text {number}")
    (tmp_path / "corpus" / "copy.txt").write_text("text 0")
    (tmp_path / "corpus" / "a.png").write_bytes(b"png")
    out = tmp_path / "out"
    code = main(["index", str(tmp_path / "corpus"), "--out", str(out), "--dry-run", "--url", "localhost:1"])
    printed = capsys.readouterr().out
    assert code == 0 and not out.exists()
    assert "6 items in this part" in printed and "to do 6" in printed
    assert "to do by modality: image 1, text 5" in printed


def test_bad_arguments_are_usage_errors(tmp_path: Path, capsys):
    assert main(["index", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["index", str(tmp_path), "--out", str(tmp_path / "o"), "--shard", "2/2"]) == 2
    assert "0 <= I < N" in capsys.readouterr().err


def test_progress_prints_a_line_when_not_on_a_terminal():
    from qwen3vl_client.bulk.job import Progress

    stream = io.StringIO()
    progress = Progress(10, stream, live=None, every=0.0)
    progress.update(4, 1, 0)
    progress.update(6, 0, 0, final=True)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("index 4/10 (40%)") and lines[-1].startswith("index 10/10 (100%)")
