"""The ``qwen3vl`` command against the real server: files written, output parsed, vectors checked
against direct tritonclient calls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as http

from qwen3vl_client import DEFAULT_QUERY_TASK
from qwen3vl_client.cli import SEARCH_TASK, TUTORIAL_DOCUMENTS, TUTORIAL_QUERIES, main
from tests.integration.conftest import embed
from tools import synthetic
from tools.ports import free_port

pytestmark = pytest.mark.server

PHOTO = synthetic.encode_image(synthetic.photo(96, 64, seed=31), "JPEG", quality=90)
SCREEN = synthetic.encode_image(synthetic.screenshot(320, 200, seed=32))
CLIP = synthetic.video(seconds=2, fps=4, width=64, height=64, kind="mp4", seed=33)
NOTE = "The capital of China is Beijing."
BROKEN = b"not an image at all"


def direct(server, rows: list[dict]) -> np.ndarray:
    client = http.InferenceServerClient(server.http_url, network_timeout=120)
    try:
        return embed(client, http, rows)
    finally:
        client.close()


@pytest.fixture
def env(server, monkeypatch):
    """Point the CLI at the test server through the environment, as a user would."""
    monkeypatch.setenv("QWEN3VL_URL", server.http_url)
    monkeypatch.delenv("QWEN3VL_PROTOCOL", raising=False)
    monkeypatch.delenv("QWEN3VL_TIMEOUT", raising=False)
    return server


@pytest.fixture
def folder(tmp_path) -> Path:
    media = tmp_path / "media"
    (media / "clips").mkdir(parents=True)
    (media / "photo.jpg").write_bytes(PHOTO)
    (media / "screen.png").write_bytes(SCREEN)
    (media / "clips" / "clip.mp4").write_bytes(CLIP)
    (media / "note.txt").write_text(NOTE)
    (media / "ignored.bin").write_bytes(b"\x00")
    return media


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_embed_prints_json_for_text_image_and_video_arguments(env, capsys, folder):
    code, out, _ = run(
        capsys,
        "embed",
        "--text",
        NOTE,
        "--image",
        str(folder / "photo.jpg"),
        "--video",
        str(folder / "clips" / "clip.mp4"),
        "--dimensions",
        "64",
    )
    assert code == 0
    document = json.loads(out)
    assert document["dimensions"] == 64 and document["errors"] == []
    assert [item["id"] for item in document["items"]] == [
        NOTE,
        str(folder / "photo.jpg"),
        str(folder / "clips" / "clip.mp4"),
    ]
    expected = direct(
        env,
        [
            {"text": NOTE, "dimensions": 64},
            {"images": [PHOTO], "dimensions": 64},
            {"videos": [CLIP], "dimensions": 64},
        ],
    )
    got = np.array([item["embedding"] for item in document["items"]], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_embed_folder_and_jsonl_to_files_with_progress(env, capsys, folder, tmp_path):
    listing = tmp_path / "items.jsonl"
    lines = [
        {"id": "query", "text": "What is the capital of China?", "instruction": DEFAULT_QUERY_TASK},
        {"text": "caption", "images": ["media/photo.jpg", "media/screen.png"]},
        {"id": "clip", "video": "media/clips/clip.mp4", "dimensions": 64},
    ]
    listing.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    out = tmp_path / "out" / "vectors"
    code, stdout, stderr = run(
        capsys,
        "embed",
        "--input",
        str(folder),
        "--input",
        str(listing),
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--progress",
    )
    assert code == 0 and stdout == ""
    assert "7/7" in stderr and f"wrote 7 embeddings of 128 dimensions to {out}.npy" in stderr
    ids = [json.loads(line) for line in (tmp_path / "out" / "vectors.jsonl").read_text().splitlines()]
    assert ids == [
        {"id": str(folder / "clips" / "clip.mp4"), "row": 0},
        {"id": str(folder / "note.txt"), "row": 1},
        {"id": str(folder / "photo.jpg"), "row": 2},
        {"id": str(folder / "screen.png"), "row": 3},
        {"id": "query", "row": 4},
        {"id": f"{listing}:2", "row": 5},
        {"id": "clip", "row": 6},
    ]
    vectors = np.load(tmp_path / "out" / "vectors.npy")
    expected = direct(
        env,
        [
            {"videos": [CLIP]},
            {"text": NOTE},
            {"images": [PHOTO]},
            {"images": [SCREEN]},
            {"text": "What is the capital of China?", "instruction": DEFAULT_QUERY_TASK},
            {"text": "caption", "images": [PHOTO, SCREEN]},
            {"videos": [CLIP], "dimensions": 64},
        ],
    )
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    assert not vectors[6, 64:].any()


def test_embed_bad_file_stops_or_is_skipped(env, capsys, folder, tmp_path):
    (folder / "broken.png").write_bytes(BROKEN)
    code, _, stderr = run(capsys, "embed", "--input", str(folder))
    assert code == 1
    assert "item 0 (image '" in stderr and "broken.png" in stderr and "not a decodable image" in stderr

    out = tmp_path / "skipped.npy"
    code, _, stderr = run(capsys, "embed", "--input", str(folder), "--on-error", "skip", "--out", str(out))
    assert code == 0 and "(1 failed)" in stderr and "skipped" in stderr
    records = [json.loads(line) for line in (tmp_path / "skipped.jsonl").read_text().splitlines()]
    assert records[0]["id"] == str(folder / "broken.png") and "not a decodable image" in records[0]["error"]
    assert [record.get("row") for record in records[1:]] == [0, 1, 2, 3]
    assert np.load(out).shape == (4, 128)


def test_embed_usage_errors_exit_2(env, capsys, tmp_path):
    assert run(capsys, "embed")[0] == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n[1, 2]\n')
    code, _, stderr = run(capsys, "embed", "--input", str(bad))
    assert code == 2 and f"{bad}:2: not a JSON object" in stderr


def test_a_wrong_flag_shows_the_subcommands_usage(capsys, tmp_path):
    for argv in (["embed"], ["similarity"], ["search", str(tmp_path)], ["rerank"], ["health"]):
        with pytest.raises(SystemExit) as exited:
            main([*argv, "--no-such-flag"])
        stderr = capsys.readouterr().err
        assert exited.value.code == 2
        assert stderr.startswith(f"usage: qwen3vl {argv[0]} [-h] [--url URL]"), stderr
        assert f"qwen3vl {argv[0]}: error: unrecognized arguments: --no-such-flag" in stderr
    # Before the command, it is the top-level parser's flag, and its usage.
    with pytest.raises(SystemExit):
        main(["--no-such-flag", "health"])
    stderr = capsys.readouterr().err
    assert stderr.startswith("usage: qwen3vl [-h]") and "qwen3vl: error: unrecognized arguments" in stderr


def test_similarity_reproduces_the_tutorial_example(env, capsys):
    code, out, _ = run(capsys, "similarity", "--json", "--protocol", "grpc", "--url", env.grpc_url)
    assert code == 0
    scores = np.array(json.loads(out))
    rows = [{"text": text, "instruction": DEFAULT_QUERY_TASK} for text in TUTORIAL_QUERIES]
    rows += [{"text": text} for text in TUTORIAL_DOCUMENTS]
    vectors = direct(env, rows)
    np.testing.assert_allclose(scores, vectors[:2] @ vectors[2:].T, atol=1e-5)

    code, out, _ = run(capsys, "similarity", "--query", "a photo", "--document", NOTE, "--document", "x")
    table = out.splitlines()
    assert code == 0 and table[0].split() == ["doc", "0", "doc", "1"]
    assert table[1].startswith("a photo") and len(table[1].split()) == 4
    assert table[-2:] == [f"doc 0: {NOTE}", "doc 1: x"]


def test_search_builds_an_index_and_answers_with_top_k(env, capsys, folder, tmp_path):
    index = tmp_path / "index"
    code, out, stderr = run(
        capsys, "search", str(folder), "Beijing", "a flat UI page", "-k", "3", "--index", str(index), "--json"
    )
    assert code == 0
    assert "4 files (4 embedded, 0 unchanged" in stderr
    assert sorted(path.name for path in index.iterdir()) == ["files.jsonl", "index.json", "vectors.npy"]
    answers = json.loads(out)
    assert [answer["query"] for answer in answers] == ["Beijing", "a flat UI page"]
    paths = ["clips/clip.mp4", "note.txt", "photo.jpg", "screen.png"]
    files = direct(env, [{"videos": [CLIP]}, {"text": NOTE}, {"images": [PHOTO]}, {"images": [SCREEN]}])
    queries = direct(
        env, [{"text": query, "instruction": SEARCH_TASK} for query in ("Beijing", "a flat UI page")]
    )
    for answer, scores in zip(answers, queries @ files.T):
        expected = [(paths[column], scores[column]) for column in np.argsort(-scores)[:3]]
        assert [result["path"] for result in answer["results"]] == [path for path, _ in expected]
        np.testing.assert_allclose(
            [result["score"] for result in answer["results"]], [s for _, s in expected], atol=1e-5
        )

    # Only new or changed files are embedded again; a broken one is remembered, not retried.
    (folder / "note.txt").write_text("Gravity attracts bodies.")
    (folder / "broken.png").write_bytes(BROKEN)
    code, out, stderr = run(capsys, "search", str(folder), "gravity", "--index", str(index), "-k", "1")
    assert code == 0 and "4 files (1 embedded, 3 unchanged, 0 removed, 1 unusable)" in stderr
    assert "not indexed: broken.png" in stderr
    assert out.splitlines()[0] == "gravity" and len(out.splitlines()) == 2
    code, _, stderr = run(capsys, "search", str(folder), "--index", str(index))
    assert code == 0 and "(0 embedded, 4 unchanged, 0 removed, 1 unusable)" in stderr
    assert "not indexed" not in stderr


def test_health_text_json_and_missing_server(env, capsys):
    code, out, _ = run(capsys, "health")
    assert code == 0
    assert f"server    {env.http_url} (http)" in out and "embedding 128 dimensions" in out
    assert "steps     qwen3_vl_embedding_preprocess (ready), qwen3_vl_embedding_model (ready)" in out
    # The reranker is reported too, after the embedding model.
    reranker = out.split("\nreranker  ")[1]
    assert reranker.startswith("qwen3_vl_reranker  ready  (ensemble, max batch 64)")
    assert "steps     qwen3_vl_reranker_preprocess (ready), qwen3_vl_reranker_model (ready)" in reranker

    code, out, _ = run(capsys, "health", "--json", "--protocol", "grpc", "--url", env.grpc_url, "--no-probe")
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["max_batch_size"] == 64 and report["dimensions"] is None
    assert report["inputs"][0] == {"name": "TEXT", "datatype": "BYTES", "dims": [1], "optional": True}
    assert report["reranker"]["name"] == "qwen3_vl_reranker" and report["reranker"]["ready"] is True
    assert [spec["name"] for spec in report["reranker"]["outputs"]] == ["SCORE", "TOKEN_COUNT"]

    # A reranker the server does not serve is reported as not ready; the embedding model decides the code.
    code, out, _ = run(capsys, "health", "--no-probe", "--reranker-model", "no_such_reranker")
    assert code == 0 and "reranker  no_such_reranker  NOT ready" in out

    code, out, _ = run(capsys, "health", "--url", f"127.0.0.1:{free_port()}", "--timeout", "5")
    assert code == 1 and "error" in out and "refused" in out.lower()


def test_server_options_before_or_after_the_command(env, capsys, monkeypatch):
    # The environment names a server that is not there: only the command line can make these pass.
    monkeypatch.setenv("QWEN3VL_URL", f"127.0.0.1:{free_port()}")
    code, out, _ = run(capsys, "--url", env.grpc_url, "--protocol", "grpc", "health", "--no-probe", "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] and (report["url"], report["protocol"]) == (env.grpc_url, "grpc")

    # After the command wins over before it, as the later of two options does.
    code, out, _ = run(
        capsys, "--url", "127.0.0.1:1", "health", "--url", env.http_url, "--no-probe", "--json"
    )
    assert code == 0 and json.loads(out)["url"] == env.http_url

    code, out, _ = run(
        capsys, "--url", env.http_url, "--batch-size", "1", "embed", "--text", "a", "--text", "b"
    )
    document = json.loads(out)
    assert code == 0 and [item["id"] for item in document["items"]] == ["a", "b"]
    np.testing.assert_allclose(
        [item["embedding"] for item in document["items"]],
        direct(env, [{"text": "a"}, {"text": "b"}]),
        atol=1e-5,
    )


def test_console_script_and_module_entry_point(env):
    environment = {**os.environ, "QWEN3VL_URL": env.http_url}
    module = subprocess.run(
        [sys.executable, "-m", "qwen3vl_client", "health", "--json", "--no-probe"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
    )
    assert module.returncode == 0, module.stderr
    assert json.loads(module.stdout)["model_ready"] is True
    script = Path(sys.executable).parent / "qwen3vl"
    if not script.exists():
        pytest.skip("qwen3vl console script not installed into this environment")
    helped = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "similarity" in helped.stdout
