"""``qwen3vl ui`` in a real headless Chromium: a folder of photos, a screenshot, a clip and texts indexed by
``qwen3vl index`` against the real server, the page loaded, a query typed and submitted, and the rendered
cards checked against the same search done with the client (ids in order, scores, thumbnails decoded,
snippets), then with the reranker on (a real click on the checkbox) and with a photo chosen as the query.

The page's screenshot is saved in the test's folder; with ``QWEN3VL_SCREENSHOT=docs/images/search-page.png``
it is saved there too (how the documentation's picture is made).
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from qwen3vl_client import EmbeddingClient, Item
from qwen3vl_client.bulk import dequantize, read_index
from qwen3vl_client.cli import SEARCH_TASK, main
from tests.browser import Browser, ensure_chromium
from tests.conftest import REPO
from tools import synthetic

pytestmark = pytest.mark.server

TEXTS = {
    "notes/beijing.txt": "The capital of China is Beijing, a city of more than twenty million people.",
    "notes/gravity.md": "# Gravity\n\nGravity is a force that attracts two bodies towards each other.",
    "notes/cats.txt": "A cat sleeps on a red sofa in the afternoon sun.",
    "notes/trains.txt": "The night train to Vienna leaves at ten past eleven from platform four.",
}
QUERY = "a red car parked by the sea"
START_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def chromium() -> Path:
    return ensure_chromium()  # installs Debian's chromium when it is missing (CI starts without it)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("page-corpus")
    (root / "photos").mkdir()
    (root / "notes").mkdir()
    for number in range(4):
        photo = synthetic.photo(96 + 16 * number, 72, seed=10 + number)
        (root / "photos" / f"photo{number}.jpg").write_bytes(
            synthetic.encode_image(photo, "JPEG", quality=85)
        )
    (root / "photos" / "screen.png").write_bytes(
        synthetic.encode_image(synthetic.screenshot(160, 120, seed=3))
    )
    (root / "clip.mp4").write_bytes(synthetic.video(seconds=1, fps=4, width=64, height=48, seed=2))
    for name, text in TEXTS.items():
        (root / name).write_text(text)
    return root


@pytest.fixture(scope="module")
def index(server, corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("page-index")
    assert main(["index", str(corpus), "--out", str(out), "--url", server.http_url, "--no-progress"]) == 0
    assert len(read_index(out).ids) == 10
    return out


@pytest.fixture(scope="module")
def page(server, corpus, index):
    """``qwen3vl ui`` on a free port: its address."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'client'}"}
    argv = ["ui", "--index", str(index), "--source", str(corpus), "--url", server.http_url, "--port", "0"]
    process = subprocess.Popen(
        [sys.executable, "-m", "qwen3vl_client", *argv], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True
    )
    assert process.stderr is not None
    try:
        deadline = time.monotonic() + START_TIMEOUT
        line = ""
        while "http://" not in line:
            ready, _, _ = select.select([process.stderr], [], [], max(0.0, deadline - time.monotonic()))
            if not ready or process.poll() is not None:
                pytest.fail(f"qwen3vl ui did not start: {line}{process.stderr.read() if ready else ''}")
            line = process.stderr.readline()
        match = re.search(r"http://\S+/", line)
        assert match, line
        # Read on, so that a chatty server never blocks on a full pipe.
        threading.Thread(target=process.stderr.read, daemon=True).start()
        yield match.group(0)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def browser(chromium, tmp_path):
    with Browser(tmp_path / "profile", timeout=60.0) as running:
        yield running


def expected_search(server, index: Path, query: Item, k: int) -> list[tuple[str, float]]:
    """The same search, done without the page: the query embedded by the client, the index read back."""
    with EmbeddingClient(server.http_url) as client:
        vector = client.embed_queries([query], SEARCH_TASK)[0]
    stored = read_index(index)
    settings = stored.settings
    vectors = dequantize(stored.vectors, settings["dtype"], settings["width"], settings.get("range"))
    scores = vectors @ vector
    order = np.argsort(-scores, kind="stable")[:k]
    return [(stored.ids[row], float(scores[row])) for row in order]


def cards(browser: Browser) -> list[dict]:
    return browser.evaluate(
        """[...document.querySelectorAll('#results .result')].map(card => {
            const image = card.querySelector('.thumb img');
            return {
                id: card.dataset.id, modality: card.dataset.modality,
                score: Number(card.dataset.score),
                rerank: card.dataset.rerankScore === undefined ? null : Number(card.dataset.rerankScore),
                shown: card.querySelector('.scores').textContent,
                image: image ? image.complete && image.naturalWidth : null,
                snippet: card.querySelector('.snippet') ? card.querySelector('.snippet').textContent : null,
            };
        })"""
    )


def search_done(browser: Browser, searches: int) -> None:
    """Wait for the page's ``searches``-th answer, and for its thumbnails to load."""
    browser.wait_for(f"Number(document.body.dataset.searches) >= {searches}")
    state = browser.evaluate("document.body.dataset.state")
    assert state == "done", browser.evaluate("document.getElementById('status').textContent")
    browser.wait_for("[...document.querySelectorAll('#results img')].every(image => image.complete)")


def test_search_page_in_chromium(server, corpus, index, page, browser, tmp_path):
    browser.open(page)
    browser.wait_for("document.getElementById('index-info').textContent.includes('10 items')")

    # A typed query, submitted with Enter: every row of the index, in the client's order and scores.
    browser.type("#k", "10")
    browser.type("#query", QUERY)
    browser.press_enter()
    search_done(browser, 1)
    shown = cards(browser)
    expected = expected_search(server, index, Item(text=QUERY), 10)
    assert [card["id"] for card in shown] == [identifier for identifier, _ in expected]
    np.testing.assert_allclose([card["score"] for card in shown], [score for _, score in expected], atol=1e-4)
    for card, (_, score) in zip(shown, expected):
        written = re.fullmatch(r"cosine (-?\d\.\d{4})", card["shown"])
        assert written and abs(float(written.group(1)) - score) < 2e-4, card
        assert card["rerank"] is None
        if card["modality"] in ("image", "video"):
            assert card["image"] and card["image"] > 0, card  # the thumbnail (a frame of the clip) decoded
        else:
            assert card["snippet"] == " ".join(TEXTS[card["id"]].split()), card
    status = browser.evaluate("document.getElementById('status').textContent")
    assert re.match(
        r"10 results in \d+ ms \(embed \d+ ms · search \d+ ms; \d+ ms in the browser\)", status
    ), status

    # The reranker: a click on the checkbox searches again, every row scored by the reranker.
    browser.click("#rerank")
    search_done(browser, 2)
    reranked = cards(browser)
    documents = []
    for identifier, _ in expected:
        path = corpus / identifier
        if identifier in TEXTS:
            documents.append(Item(text=TEXTS[identifier]))
        elif path.suffix == ".mp4":
            documents.append(Item(videos=(path,)))
        else:
            documents.append(Item(images=(path,)))
    with EmbeddingClient(server.http_url) as client:
        result = client.rerank(Item(text=QUERY), documents)
    assert [card["id"] for card in reranked] == [expected[index][0] for index, _ in result.top()]
    np.testing.assert_allclose([card["rerank"] for card in reranked], [s for _, s in result.top()], atol=1e-4)
    for card in reranked:
        written = re.fullmatch(r"rerank (\d\.\d{4})cosine (-?\d\.\d{4})", card["shown"])
        assert written and abs(float(written.group(1)) - card["rerank"]) < 2e-4, card
    status = browser.evaluate("document.getElementById('status').textContent")
    assert re.match(r"10 results in \d+ ms \(embed \d+ ms · search \d+ ms · rerank \d+ ms;", status), status
    browser.screenshot(tmp_path / "search-page.png")
    if os.environ.get("QWEN3VL_SCREENSHOT"):
        shutil.copyfile(tmp_path / "search-page.png", os.environ["QWEN3VL_SCREENSHOT"])

    # A photo chosen as the query (the drop zone's file input), the text cleared, the best 5 without the
    # reranker (unticked without the search a click starts).
    browser.evaluate("document.getElementById('rerank').checked = false")
    browser.type("#k", "5")
    photo = corpus / "photos" / "photo2.jpg"
    browser.set_files("#file", [photo])
    browser.wait_for("!document.getElementById('file-chip').hidden")
    browser.type("#query", "")
    browser.click("#submit")
    search_done(browser, 3)
    by_image = cards(browser)
    expected = expected_search(server, index, Item(images=(photo,)), 5)
    assert [card["id"] for card in by_image] == [identifier for identifier, _ in expected]
    np.testing.assert_allclose([card["score"] for card in by_image], [s for _, s in expected], atol=1e-4)
    assert all(card["rerank"] is None for card in by_image)
