"""Reranking through qwen3vl_client and the ``qwen3vl rerank`` command against the real server: sync and
asyncio, HTTP and gRPC, split requests, bad documents and queries; scores compared with direct
tritonclient calls."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import tritonclient.http as http

from qwen3vl_client import (
    AsyncEmbeddingClient,
    EmbeddingClient,
    Item,
    ItemError,
    RequestError,
    RerankResult,
)
from qwen3vl_client.cli import main
from tests.integration.conftest import rerank
from tools import synthetic

pytestmark = pytest.mark.server

PHOTO = synthetic.encode_image(synthetic.photo(96, 64, seed=41), "JPEG", quality=90)
SCREEN_IMAGE = synthetic.screenshot(320, 200, seed=42)
SCREEN_PNG = synthetic.encode_image(SCREEN_IMAGE)  # what the client sends for a PIL image
CLIP = synthetic.video(seconds=2, fps=4, width=64, height=64, kind="mp4", seed=43)
CORRUPT = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
QUERY = "What is the capital of China?"
INSTRUCTION = "Retrieve images or passages that answer the question"
PROTOCOLS = ["http", "grpc"]
TOLERANCE = 1e-6


def url(server, protocol: str) -> str:
    return server.http_url if protocol == "http" else server.grpc_url


def direct(server, query: dict, documents: list[dict], instruction: str | None = None) -> np.ndarray:
    """The same pairs through plain tritonclient, one request."""
    client = http.InferenceServerClient(server.http_url, network_timeout=120)
    try:
        return rerank(client, http, query, documents, instruction)
    finally:
        client.close()


def ranking(scores: np.ndarray) -> list[int]:
    return np.argsort(-scores, kind="stable").tolist()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rerank-media")
    (folder / "photo.jpg").write_bytes(PHOTO)
    (folder / "clip.mp4").write_bytes(CLIP)
    return folder


def documents_case(media) -> tuple[list, list[dict]]:
    """(what the library is given, the equivalent raw documents): every kind, more than one request."""
    return (
        [
            "The capital of China is Beijing.",
            Item(images=[media / "photo.jpg"]),
            Item(text="dashboard", images=SCREEN_IMAGE),
            "Gravity attracts bodies.",
            Item(videos=[str(media / "clip.mp4")], text="a moving disc"),
            Item(images=[PHOTO, SCREEN_IMAGE], videos=[CLIP]),
            "Beijing " * 40,
        ],
        [
            {"text": "The capital of China is Beijing."},
            {"images": [PHOTO]},
            {"text": "dashboard", "images": [SCREEN_PNG]},
            {"text": "Gravity attracts bodies."},
            {"videos": [CLIP], "text": "a moving disc"},
            {"images": [PHOTO, SCREEN_PNG], "videos": [CLIP]},
            {"text": "Beijing " * 40},
        ],
    )


def check_result(result: RerankResult, expected: np.ndarray, top_k: int | None = None):
    assert result.scores.dtype == np.float32 and result.scores.shape == expected.shape
    np.testing.assert_allclose(result.scores, expected, atol=TOLERANCE, rtol=0)
    assert result.order.tolist() == ranking(result.scores)[:top_k]
    assert result.top() == [(index, float(result.scores[index])) for index in result.order]
    assert result.errors == () and result.ok.all()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_rerank_sync_equals_direct_calls_in_order_across_split_requests(server, media, protocol):
    documents, rows = documents_case(media)
    expected = direct(server, {"text": QUERY}, rows)
    done: list[int] = []
    with EmbeddingClient(url(server, protocol), protocol, batch_size=2, max_concurrency=3) as client:
        result = client.rerank(QUERY, documents, progress=done.append)
        best = client.rerank(QUERY, documents, top_k=3)
    check_result(result, expected)
    assert done == [2, 2, 2, 1]  # one call per request of at most 2 documents
    check_result(best, expected, top_k=3)
    assert best.top(1) == result.top()[:1]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_rerank_async_with_a_multimodal_query_and_an_instruction(server, media, protocol):
    documents, rows = documents_case(media)
    query = Item(text="find pictures like this", images=[media / "photo.jpg"])
    expected = direct(server, {"text": "find pictures like this", "images": [PHOTO]}, rows, INSTRUCTION)
    default = direct(server, {"text": "find pictures like this", "images": [PHOTO]}, rows)
    assert np.abs(expected - default).max() > 1e-4  # the instruction matters

    async def run():
        async with AsyncEmbeddingClient(url(server, protocol), protocol, batch_size=3) as client:
            return await client.rerank(query, documents, instruction=INSTRUCTION, top_k=4)

    check_result(asyncio.run(run()), expected, top_k=4)


BAD_INDEX = 4


def bad_documents(media) -> list:
    documents: list = [f"document {index}" for index in range(8)]
    documents[BAD_INDEX] = Item(text="caption", images=[PHOTO, CORRUPT])
    return documents


def check_skipped(server, result: RerankResult, bad: list[int]):
    assert [error.index for error in result.errors] == bad
    assert result.errors[0].status is None and "missing.png" in str(result.errors[0])
    assert "DOCUMENT_IMAGE[1]" in result.errors[1].reason
    assert "document has no content" in result.errors[2].reason
    good = [index for index in range(8) if index not in bad]
    assert result.ok.tolist() == [index in good for index in range(8)]
    assert np.isnan(result.scores[bad]).all()
    expected = direct(server, {"text": QUERY}, [{"text": f"document {index}"} for index in good])
    np.testing.assert_allclose(result.scores[good], expected, atol=TOLERANCE, rtol=0)
    assert result.order.tolist() == [good[position] for position in ranking(expected)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_bad_document_raises_naming_it_and_skip_mode_scores_the_others(server, media, protocol):
    skipped = bad_documents(media)
    skipped[1] = Item(images=[media / "missing.png"])
    skipped[6] = Item(text="")
    bad = [1, BAD_INDEX, 6]
    with EmbeddingClient(url(server, protocol), protocol, batch_size=3) as client:
        with pytest.raises(ItemError) as failure:
            client.rerank(QUERY, bad_documents(media))
        sync = client.rerank(QUERY, skipped, on_error="skip")
    error = failure.value
    assert error.index == BAD_INDEX and error.status in ("400", "StatusCode.INVALID_ARGUMENT")
    assert error.reason.startswith("DOCUMENT_IMAGE[1]: bytes are not a decodable image")
    assert str(error).startswith(f"item {BAD_INDEX} (text 'caption'; images <")
    check_skipped(server, sync, bad)

    async def run():
        async with AsyncEmbeddingClient(url(server, protocol), protocol, batch_size=3) as client:
            with pytest.raises(ItemError, match=f"^item {BAD_INDEX} "):
                await client.rerank(QUERY, bad_documents(media))
            return await client.rerank(QUERY, skipped, on_error="skip")

    check_skipped(server, asyncio.run(run()), bad)


def test_a_bad_query_fails_the_call_even_in_skip_mode(server):
    query = Item(text="q", images=[CORRUPT])
    with EmbeddingClient(server.http_url, batch_size=2) as client:
        with pytest.raises(RequestError, match=r"query \(text 'q'; image <72 bytes>\): QUERY_IMAGE\[0\]"):
            client.rerank(query, ["a", "b", "c"], on_error="skip")
        with pytest.raises(RequestError, match="QUERY_IMAGE"):
            client.rerank(query, ["a", "b", "c"])
        assert client.rerank("q", []).order.size == 0


def test_rerank_arguments_are_checked_before_any_request(server):
    with EmbeddingClient(server.http_url, reranker_model="no_such_model") as client:
        with pytest.raises(ValueError, match="document 1 sets dimensions, which reranking does not use"):
            client.rerank("q", ["a", Item(text="b", dimensions=64)])
        with pytest.raises(ValueError, match="the query sets instruction.*rerank\\(..., instruction=...\\)"):
            client.rerank(Item(text="q", instruction="x"), ["a"])
        with pytest.raises(ValueError, match="the query has no content"):
            client.rerank("", ["a"])
        with pytest.raises(ValueError, match="top_k"):
            client.rerank("q", ["a"], top_k=0)
        with pytest.raises(RequestError, match="no_such_model"):
            client.rerank("q", ["a"])


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_rerank_prints_ranked_documents_as_json_and_table(server, capsys, media, monkeypatch, tmp_path):
    monkeypatch.setenv("QWEN3VL_URL", server.http_url)
    monkeypatch.delenv("QWEN3VL_PROTOCOL", raising=False)
    monkeypatch.setenv("QWEN3VL_RERANKER_MODEL", "qwen3_vl_reranker")
    listing = tmp_path / "documents.jsonl"
    listing.write_text(
        json.dumps({"id": "clip", "text": "a moving disc", "videos": [str(media / "clip.mp4")]})
    )
    photo = str(media / "photo.jpg")
    argv = ["rerank", "--query", QUERY, "--document", "The capital of China is Beijing."]
    argv += ["--document-image", photo, "--input", str(listing), "--document", "Gravity attracts bodies."]
    code, out, _ = run_cli(capsys, *argv, "--instruction", INSTRUCTION, "-k", "3", "--json")
    assert code == 0
    answer = json.loads(out)
    expected = direct(
        server,
        {"text": QUERY},
        [
            {"text": "The capital of China is Beijing."},
            {"images": [PHOTO]},
            {"text": "a moving disc", "videos": [CLIP]},
            {"text": "Gravity attracts bodies."},
        ],
        INSTRUCTION,
    )
    ids = ["The capital of China is Beijing.", photo, "clip", "Gravity attracts bodies."]
    best = ranking(expected)[:3]
    assert answer["model"] == "qwen3_vl_reranker" and answer["errors"] == []
    assert answer["query"] == {"text": QUERY, "images": [], "videos": []}
    assert [result["index"] for result in answer["results"]] == best
    assert [result["id"] for result in answer["results"]] == [ids[index] for index in best]
    assert [result["rank"] for result in answer["results"]] == [1, 2, 3]
    got = [result["score"] for result in answer["results"]]
    np.testing.assert_allclose(got, expected[best], atol=TOLERANCE, rtol=0)

    # The table over gRPC, one document skipped.
    (tmp_path / "broken.png").write_bytes(CORRUPT)
    argv += ["--document-image", str(tmp_path / "broken.png"), "--on-error", "skip"]
    code, out, err = run_cli(capsys, *argv, "--protocol", "grpc", "--url", server.grpc_url)
    assert code == 0 and f"skipped {tmp_path / 'broken.png'}: DOCUMENT_IMAGE[0]" in err
    lines = out.splitlines()
    assert lines[:2] == [f"query: {QUERY}", "rank   score  doc  document"]
    rows = [line.split(maxsplit=3) for line in lines[2:]]
    plain = direct(server, {"text": QUERY}, [{"text": "a moving disc", "videos": [CLIP]}])
    assert len(rows) == 4 and [row[0] for row in rows] == ["1", "2", "3", "4"]
    assert {row[3] for row in rows} == set(ids)
    assert [row[3] for row in rows if row[2] == "2"] == ["clip"]
    assert [abs(float(row[1]) - plain[0]) <= 5e-5 + TOLERANCE for row in rows if row[3] == "clip"] == [True]

    assert run_cli(capsys, "rerank", "--document", "x")[0] == 2  # no query
    assert run_cli(capsys, "rerank", "--query", "q")[0] == 2  # no documents
