"""The search page's app without a server: its routes called in process over ASGI, a fake client standing in
for Triton, and indexes built by the bulk job (with a fake embedder) and by ``qwen3vl search``'s
``update_index``. The page itself, in Chromium against the real server: tests/integration/test_search_page.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from qwen3vl_client.bulk.job import EmbedOutcome, JobOptions, make_plan, run
from qwen3vl_client.bulk.sources import records
from qwen3vl_client.bulk.store import Store
from qwen3vl_client.errors import ItemError
from qwen3vl_client.index import update_index
from qwen3vl_client.items import Item
from qwen3vl_client.results import RerankResult
from qwen3vl_client.ui.app import PageOptions, SearchPage
from qwen3vl_client.ui.corpus import Corpus, CorpusError
from qwen3vl_client.ui.previews import snippet, video_frame
from tools import synthetic

WIDTH = 8


def vector_of(item: Item) -> np.ndarray:
    """A unit vector from the item's content: the same content, the same vector."""
    key = item.text if item.text is not None else bytes(item.images[0] if item.images else item.videos[0])
    seed = sum(key.encode() if isinstance(key, str) else key) % 2**32
    vector = np.random.default_rng(seed).normal(size=WIDTH).astype(np.float32)
    return vector / np.linalg.norm(vector)


class FakeEmbedder:
    def embed(self, items: list[Item], dimensions: int) -> EmbedOutcome:
        return EmbedOutcome(np.stack([vector_of(item) for item in items]))


class FakeClient:
    """What the page asks of ``AsyncEmbeddingClient``: query vectors, rerank scores (the documents' text
    length, so the order is known), refusals of what it cannot read."""

    def __init__(self) -> None:
        self.reranked: list[int] = []

    async def embed_queries(
        self, queries: list[Item], task: str, dimensions: int | None = None
    ) -> np.ndarray:
        item = queries[0]
        if item.images and bytes(item.images[0]) == b"not an image":
            raise ItemError(0, "image", "bytes are not a decodable image")
        return np.stack([vector_of(item)])

    async def rerank(self, query: Item, documents: list[Item], top_k: int, on_error: str) -> RerankResult:
        self.reranked.append(len(documents))
        scores = np.array([len(doc.text or "") / 100 for doc in documents], dtype=np.float32)
        errors = tuple(
            ItemError(i, "doc", "too long") for i, doc in enumerate(documents) if doc.text == "x" * 99
        )
        for error in errors:
            scores[error.index] = np.nan
        good = [i for i in np.argsort(-scores, kind="stable") if not np.isnan(scores[i])]
        return RerankResult(scores, np.array(good[:top_k]), errors)

    async def close(self) -> None:
        pass


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "corpus"
    (root / "notes").mkdir(parents=True)
    for number in range(6):
        (root / "notes" / f"note{number}.txt").write_text(" ".join(["word"] * (number + 1)))
    (root / "notes" / "long.md").write_text("x" * 99)
    (root / "photo.png").write_bytes(synthetic.encode_image(synthetic.photo(80, 60, seed=1)))
    (root / "clip.mp4").write_bytes(synthetic.video(seconds=1, fps=4, width=64, height=48, seed=1))
    return root


def build_index(source: Path, out: Path, dtype: str = "float32") -> Path:
    store = Store(out)
    options = JobOptions("tiny", dtype=dtype)
    store.open(options.settings())
    run(make_plan(records(source), store, (0, 1)), store, FakeEmbedder(), options)
    return out


def call(
    page: SearchPage, method: str, path: str, body: Any = None, query: str = ""
) -> tuple[int, Any, bytes]:
    """One request through the app over ASGI: (status, content type, body)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())],
        "server": ("test", 80),
        "client": ("test", 1),
    }
    sent: list[dict[str, Any]] = []
    requests = [{"type": "http.request", "body": raw, "more_body": False}]

    async def main() -> None:
        finished = asyncio.Event()

        async def receive() -> dict[str, Any]:
            if requests:
                return requests.pop()
            await finished.wait()  # a streamed response listens for the client leaving meanwhile
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                finished.set()

        await page.app()(scope, receive, send)

    asyncio.run(main())
    start = next(message for message in sent if message["type"] == "http.response.start")
    content = b"".join(
        message.get("body", b"") for message in sent if message["type"] == "http.response.body"
    )
    headers = dict(start["headers"])
    return start["status"], headers.get(b"content-type", b"").decode(), content


def make_page(corpus: Corpus, candidates: int = 20) -> tuple[SearchPage, FakeClient]:
    client = FakeClient()
    page = SearchPage(corpus, lambda: client, PageOptions("find it", 5, candidates))  # type: ignore[arg-type, return-value]
    page.client = client  # type: ignore[assignment]  # what the lifespan sets
    return page, client


def search(page: SearchPage, **body: Any) -> tuple[int, dict[str, Any]]:
    status, _, content = call(page, "POST", "/api/search", body)
    return status, json.loads(content)


def test_a_text_query_finds_the_nearest_rows_with_previews(folder, tmp_path):
    corpus = Corpus(build_index(folder, tmp_path / "index", dtype="int8"), folder)
    page, _ = make_page(corpus)
    status, answer = search(page, text="word word", k=9)
    assert status == 200, answer
    query = vector_of(Item(text="word word"))
    every = {record.id: vector_of(record.load().item()) for record in records(folder)}
    expected = sorted(every, key=lambda identifier: -float(every[identifier] @ query))
    assert [card["id"] for card in answer["results"]] == expected
    # int8 vectors, dequantized: close to the float scores
    for card in answer["results"]:
        assert card["score"] == pytest.approx(float(every[card["id"]] @ query), abs=0.02)
    assert [card["rank"] for card in answer["results"]] == list(range(1, 10))
    by_id = {card["id"]: card for card in answer["results"]}
    assert by_id["notes/note1.txt"] == {**by_id["notes/note1.txt"], "snippet": "word word", "thumbnail": None}
    assert by_id["photo.png"]["thumbnail"] == "/api/thumbnail?id=photo.png"
    assert by_id["clip.mp4"]["modality"] == "video" and by_id["clip.mp4"]["snippet"] is None
    assert set(answer["timings_ms"]) == {"embed", "search", "rerank", "total"}
    assert answer["timings_ms"]["rerank"] is None and answer["reranked"] is False


def test_rerank_scores_the_candidates_and_shows_the_best_k(folder, tmp_path):
    corpus = Corpus(build_index(folder, tmp_path / "index"), folder)
    page, client = make_page(corpus, candidates=6)
    status, answer = search(page, text="word", k=3, rerank=True)
    assert status == 200, answer
    assert client.reranked == [6]  # the 6 nearest rows went to the reranker, the best 3 of them are shown
    _, plain = search(page, text="word", k=6)
    length = {record.id: len(record.load().text or "") for record in records(folder)}
    candidates = [card["id"] for card in plain["results"] if card["id"] != "notes/long.md"]
    best = sorted(candidates, key=lambda identifier: -length[identifier])[:3]
    assert [card["id"] for card in answer["results"]] == best
    assert [card["rerank_score"] for card in answer["results"]] == pytest.approx(
        [length[i] / 100 for i in best]
    )
    assert all("score" in card for card in answer["results"]) and answer["timings_ms"]["rerank"] is not None
    # Every row a candidate: the one the reranker refuses is listed, not shown.
    page, client = make_page(corpus, candidates=20)
    status, answer = search(page, text="word", k=9, rerank=True)
    assert client.reranked == [9] and len(answer["results"]) == 8
    assert answer["skipped"] == [{"id": "notes/long.md", "reason": "too long"}]


def test_an_image_query_and_bad_queries(folder, tmp_path):
    corpus = Corpus(build_index(folder, tmp_path / "index"), folder)
    page, _ = make_page(corpus)
    photo = (folder / "photo.png").read_bytes()
    status, answer = search(page, media={"kind": "image", "data": base64.b64encode(photo).decode()}, k=1)
    assert status == 200 and [card["id"] for card in answer["results"]] == ["photo.png"]
    bad = {
        "type a query or drop an image": {"text": "  "},
        "k must be an integer from 1 to 100": {"text": "a", "k": 0},
        "media data is not base64": {"media": {"kind": "image", "data": "%%%"}},
        'media must be {"kind"': {"media": {"kind": "audio", "data": ""}},
        "the query: bytes are not a decodable image": {
            "media": {"kind": "image", "data": base64.b64encode(b"not an image").decode()}
        },
    }
    for message, body in bad.items():
        status, answer = search(page, **body)
        assert status == 400 and answer["error"].startswith(message), (body, answer)
    status, _, content = call(page, "POST", "/api/search", b"{not json")
    assert status == 400 and json.loads(content) == {"error": "the body is not JSON"}


def test_thumbnails_of_an_image_and_a_video_frame(folder, tmp_path):
    corpus = Corpus(build_index(folder, tmp_path / "index"), folder)
    page, _ = make_page(corpus)
    for identifier, size in (("photo.png", (80, 60)), ("clip.mp4", (64, 48))):
        status, kind, content = call(page, "GET", "/api/thumbnail", query=f"id={identifier}")
        assert status == 200 and kind == "image/jpeg"
        assert Image.open(io.BytesIO(content)).size == size
    for missing in ("notes/note0.txt", "nowhere.png"):
        assert call(page, "GET", "/api/thumbnail", query=f"id={missing}")[0] == 404
    status, kind, content = call(page, "GET", "/")
    assert status == 200 and b'<form id="search-form"' in content
    assert call(page, "GET", "/static/page.js")[0] == 200


def test_without_the_source_ids_only_and_no_rerank(folder, tmp_path):
    corpus = Corpus(build_index(folder, tmp_path / "index"), None)
    page, _ = make_page(corpus)
    status, answer = search(page, text="word", k=2)
    assert status == 200 and all(c["thumbnail"] is None and c["snippet"] is None for c in answer["results"])
    status, answer = search(page, text="word", k=2, rerank=True)
    assert status == 500 and "start the page with --source" in answer["error"]
    status, _, content = call(page, "GET", "/api/index")
    assert json.loads(content) == {
        "kind": "bulk",
        "items": 9,
        "dimensions": None,
        "model": "tiny",
        "dtype": "float32",
        "source": None,
        "default_k": 5,
        "rerank_candidates": 20,
    }


def test_the_page_sees_rows_a_running_job_commits(folder, tmp_path):
    out = build_index(folder, tmp_path / "index")
    corpus = Corpus(out, folder)
    assert corpus.summary.items == 9
    (folder / "notes" / "late.txt").write_text("a late arrival")
    build_index(folder, out)
    assert corpus.summary.items == 10
    assert corpus.search(vector_of(Item(text="a late arrival")), 1)[0].id == "notes/late.txt"
    assert corpus.record("notes/late.txt") is not None  # the source is listed again for the new row


def test_the_index_of_qwen3vl_search(folder, tmp_path):
    def embed(items: list[Item]) -> tuple[np.ndarray, tuple[ItemError, ...]]:
        return np.stack([vector_of(item) for item in items]), ()

    directory = tmp_path / "search-index"
    update_index(folder, directory, 0, embed)
    corpus = Corpus(directory)  # the folder comes from the index itself
    assert corpus.summary.kind == "folder" and corpus.summary.source == str(folder.resolve())
    page, _ = make_page(corpus)
    status, answer = search(page, text="word word word", k=1)
    assert status == 200 and answer["results"][0]["id"] == "notes/note2.txt"
    assert answer["results"][0]["snippet"] == "word word word"


def test_not_an_index(tmp_path):
    with pytest.raises(CorpusError, match="not an index"):
        Corpus(tmp_path)


def test_previews(tmp_path):
    long = tmp_path / "long.txt"
    long.write_text("spaced\n\n  out " + "y" * 400)
    from qwen3vl_client.bulk.sources import Record

    text = snippet(Record("long.txt", text_file=long))
    assert text is not None and text.startswith("spaced out yyy") and len(text) == 280 and text.endswith("…")
    clip = tmp_path / "clip.webm"
    clip.write_bytes(synthetic.video(seconds=1, fps=6, width=40, height=30, kind="webm"))
    assert Image.open(io.BytesIO(video_frame(clip))).size == (40, 30)
