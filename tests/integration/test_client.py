"""qwen3vl_client against the real server: every modality, sync and asyncio, HTTP and gRPC, split
requests, bad items, retries; vectors compared with direct tritonclient calls."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import numpy as np
import pytest
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

from qwen3vl_client import (
    DEFAULT_QUERY_TASK,
    AsyncEmbeddingClient,
    EmbeddingClient,
    EmbeddingResult,
    Item,
    ItemError,
    RequestError,
    ServerUnavailableError,
)
from qwen3vl_client._retry import Retry, next_step
from qwen3vl_client.items import Batch, encode_row
from qwen3vl_client.options import make_options
from tests.integration.conftest import embed
from tools import synthetic
from tools.ports import free_port

pytestmark = pytest.mark.server

PHOTO_IMAGE = synthetic.photo(96, 64, seed=21)
PHOTO = synthetic.encode_image(PHOTO_IMAGE, "JPEG", quality=90)
SCREEN_IMAGE = synthetic.screenshot(320, 200, seed=22)
SCREEN_PNG = synthetic.encode_image(SCREEN_IMAGE)  # what the client sends for a PIL image
CLIP_MP4 = synthetic.video(seconds=2, fps=4, width=64, height=64, kind="mp4", seed=23)
CLIP_WEBM = synthetic.video(seconds=2, fps=4, width=64, height=64, kind="webm", seed=24)
CLIP_GIF = synthetic.video(seconds=2, fps=4, width=64, height=64, kind="gif", seed=25)
CORRUPT = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
PROTOCOLS = ["http", "grpc"]


def url(server, protocol: str) -> str:
    return server.http_url if protocol == "http" else server.grpc_url


def direct(server, rows: list[dict]) -> np.ndarray:
    """The same rows through plain tritonclient, one request."""
    client = http.InferenceServerClient(server.http_url, network_timeout=120)
    try:
        return embed(client, http, rows)
    finally:
        client.close()


def assert_rows_equal(got: np.ndarray, expected: np.ndarray):
    assert got.shape == expected.shape
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("client-media")
    (folder / "photo.jpg").write_bytes(PHOTO)
    (folder / "clip.mp4").write_bytes(CLIP_MP4)
    return folder


def modality_cases(media) -> tuple[list, list[dict]]:
    """(what the library is given, the equivalent raw rows) for every kind of input."""
    return (
        [
            "The capital of China is Beijing.",
            Item(images=[media / "photo.jpg"]),  # path
            Item(images=PHOTO),  # bytes, given as one image, not a sequence
            Item(images=[SCREEN_IMAGE], text="dashboard"),  # PIL screenshot + text
            Item(videos=[str(media / "clip.mp4")]),  # path as str
            Item(videos=[CLIP_WEBM], text="a moving disc"),
            Item(videos=[CLIP_GIF], images=[PHOTO, SCREEN_IMAGE], text="everything", instruction="Find it"),
            Item(text="Matryoshka", dimensions=64),
        ],
        [
            {"text": "The capital of China is Beijing."},
            {"images": [PHOTO]},
            {"images": [PHOTO]},
            {"images": [SCREEN_PNG], "text": "dashboard"},
            {"videos": [CLIP_MP4]},
            {"videos": [CLIP_WEBM], "text": "a moving disc"},
            {
                "videos": [CLIP_GIF],
                "images": [PHOTO, SCREEN_PNG],
                "text": "everything",
                "instruction": "Find it",
            },
            {"text": "Matryoshka", "dimensions": 64},
        ],
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_modality_sync(server, media, protocol):
    items, rows = modality_cases(media)
    expected = direct(server, rows)
    with EmbeddingClient(url(server, protocol), protocol, batch_size=3) as client:
        got = client.embed(items)
    # The 64-dimension item is zero-padded to the widest row, as the server pads it.
    assert_rows_equal(got, expected)
    assert not got[-1, 64:].any()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_modality_async(server, media, protocol):
    items, rows = modality_cases(media)
    expected = direct(server, rows)

    async def run():
        async with AsyncEmbeddingClient(url(server, protocol), protocol, batch_size=3) as client:
            return await client.embed(items)

    assert_rows_equal(asyncio.run(run()), expected)


def test_texts_images_videos_keywords_and_call_wide_options(server, media):
    expected = direct(
        server,
        [
            {"text": "a", "instruction": "Find it", "dimensions": 96},
            {"text": "b", "instruction": "Find it", "dimensions": 96},
            {"images": [PHOTO], "instruction": "Find it", "dimensions": 96},
            {"images": [SCREEN_PNG], "instruction": "Find it", "dimensions": 96},
            {"videos": [CLIP_GIF], "instruction": "Find it", "dimensions": 96},
        ],
    )
    with EmbeddingClient(server.http_url) as client:
        got = client.embed(
            texts=["a", "b"],
            images=[media / "photo.jpg", SCREEN_IMAGE],
            videos=[CLIP_GIF],
            instruction="Find it",
            dimensions=96,
        )
    assert got.shape == (5, 96)
    assert_rows_equal(got, expected[:, :96])


def test_embed_queries_applies_the_task_and_documents_use_the_default(server):
    expected = direct(
        server,
        [
            {"text": "What is the capital of China?", "instruction": DEFAULT_QUERY_TASK},
            {"text": "What is the capital of China?"},
        ],
    )
    with EmbeddingClient(server.grpc_url, "grpc") as client:
        query = client.embed_queries(["What is the capital of China?"])
        custom = client.embed_queries("What is the capital of China?", task="Find it")
        document = client.embed(["What is the capital of China?"])
    assert_rows_equal(query, expected[:1])
    assert_rows_equal(document, expected[1:])
    assert np.abs(custom - query).max() > 1e-3


SPLIT_TEXTS = [f"item {index}: " + "word " * (index % 5 * 7) for index in range(23)]


def split_case(server):
    items = [
        Item(text=text, dimensions=64 if index % 4 == 1 else None) for index, text in enumerate(SPLIT_TEXTS)
    ]
    rows = [{"text": text} for text in SPLIT_TEXTS]
    expected = direct(server, rows)
    for index in range(1, len(rows), 4):
        expected[index, :64] = direct(server, [{"text": SPLIT_TEXTS[index], "dimensions": 64}])[0]
        expected[index, 64:] = 0
    return items, expected


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_order_is_preserved_across_split_concurrent_requests(server, protocol, mode):
    items, expected = split_case(server)
    done: list[int] = []
    options = {"batch_size": 4, "max_concurrency": 3}
    if mode == "sync":
        with EmbeddingClient(url(server, protocol), protocol, **options) as client:
            got = client.embed(items, progress=done.append)
    else:

        async def run():
            async with AsyncEmbeddingClient(url(server, protocol), protocol, **options) as client:
                return await client.embed(items, progress=done.append)

        got = asyncio.run(run())
    assert_rows_equal(got, expected)
    assert sum(done) == len(items) and len(done) == 6  # one call per request of at most 4


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_batch_size_is_capped_at_the_models_max_batch_size(server, protocol, mode):
    texts = [f"text number {index}" for index in range(150)]  # the ensembles take at most 64 rows
    done: list[int] = []
    if mode == "sync":
        with EmbeddingClient(url(server, protocol), protocol, batch_size=500) as client:
            got = client.embed(texts, progress=done.append)
            scores = client.rerank("a query", texts[:70]).scores
    else:

        async def run():
            async with AsyncEmbeddingClient(url(server, protocol), protocol, batch_size=500) as client:
                vectors = await client.embed(texts, progress=done.append)
                return vectors, (await client.rerank("a query", texts[:70])).scores

        got, scores = asyncio.run(run())
    assert sorted(done) == [22, 64, 64]
    assert_rows_equal(got[:3], direct(server, [{"text": text} for text in texts[:3]]))
    assert got.shape == (150, 128) and scores.shape == (70,)


def test_requests_are_also_cut_by_size(server):
    with EmbeddingClient(server.http_url, batch_size=64, max_request_bytes=len(PHOTO) * 2) as client:
        calls: list[int] = []
        got = client.embed(images=[PHOTO] * 5, progress=calls.append)
    assert calls == [2, 2, 1]
    assert_rows_equal(got, np.repeat(direct(server, [{"images": [PHOTO]}]), 5, axis=0))


BAD_INDEX = 6


def bad_case(media):
    items: list = [f"good {index}" for index in range(10)]
    items[BAD_INDEX] = Item(text="caption", images=[PHOTO, CORRUPT])
    return items


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_bad_item_raises_an_error_naming_it(server, media, protocol):
    with EmbeddingClient(url(server, protocol), protocol, batch_size=4) as client:
        with pytest.raises(ItemError) as failure:
            client.embed(bad_case(media))
    error = failure.value
    assert error.index == BAD_INDEX
    assert error.status in ("400", "StatusCode.INVALID_ARGUMENT")
    assert "IMAGE[1]" in error.reason and "not a decodable image" in error.reason
    assert str(error).startswith(f"item {BAD_INDEX} (text 'caption'; images <")


def skip_case(media):
    items = bad_case(media)
    items[2] = Item(images=[media / "missing.png"])
    items[9] = Item(text="too small", dimensions=32)
    return items, [2, BAD_INDEX, 9]


def check_skipped(server, result: EmbeddingResult, bad: list[int]):
    assert [error.index for error in result.errors] == bad
    assert "missing.png" in str(result.errors[0]) and result.errors[0].status is None
    assert "DIMENSIONS: must be between 64 and 128" in result.errors[2].reason
    good = [index for index in range(10) if index not in bad]
    assert result.ok.tolist() == [index in good for index in range(10)]
    assert np.isnan(result.embeddings[bad]).all()
    assert_rows_equal(result.embeddings[good], direct(server, [{"text": f"good {index}"} for index in good]))
    # The server's TOKEN_COUNT per item: the same for texts of one shape, -1 for the failed ones.
    assert result.token_counts is not None and (result.token_counts[bad] == -1).all()
    assert result.token_counts[good].min() == result.token_counts[good].max() > 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_skip_mode_returns_the_good_items_and_lists_the_bad_ones_sync(server, media, protocol):
    items, bad = skip_case(media)
    done: list[int] = []
    with EmbeddingClient(url(server, protocol), protocol, batch_size=4, max_concurrency=2) as client:
        result = client.embed(items, on_error="skip", progress=done.append)
    check_skipped(server, result, bad)
    assert sum(done) == len(items)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_skip_mode_returns_the_good_items_and_lists_the_bad_ones_async(server, media, protocol):
    items, bad = skip_case(media)

    async def run():
        async with AsyncEmbeddingClient(url(server, protocol), protocol, batch_size=4) as client:
            with pytest.raises(ItemError, match=f"^item {BAD_INDEX} "):
                await client.embed(bad_case(media))
            return await client.embed(items, on_error="skip")

    check_skipped(server, asyncio.run(run()), bad)


def test_a_server_error_not_about_one_row_names_the_request_items(server):
    with EmbeddingClient(server.http_url, model="no_such_model", batch_size=2) as client:
        with pytest.raises(RequestError, match=r"request for items 0-1 failed: 404: .*no_such_model"):
            client.embed(["a", "b", "c"])


class LateProxy:
    """Nothing listens on ``port`` until ``open()``; then connections are forwarded to ``target``."""

    def __init__(self, target_port: int):
        self.port = free_port()
        self.target_port = target_port
        self.connections = 0
        self._listener: socket.socket | None = None

    def open(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                end.close()


def test_unavailable_server_is_retried_with_backoff_until_it_comes_up(server):
    proxy = LateProxy(server.http_port)
    opener = threading.Timer(0.4, proxy.open)
    started = time.monotonic()
    opener.start()
    try:
        with EmbeddingClient(f"127.0.0.1:{proxy.port}", retries=8, backoff=0.1) as client:
            got = client.embed(["retried"])
    finally:
        opener.cancel()
        proxy.close()
    assert time.monotonic() - started >= 0.4 and proxy.connections >= 1
    assert_rows_equal(got, direct(server, [{"text": "retried"}]))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_retries_give_up_with_server_unavailable(protocol):
    port = free_port()
    started = time.monotonic()
    with EmbeddingClient(f"127.0.0.1:{port}", protocol, retries=2, backoff=0.05) as client:
        with pytest.raises(ServerUnavailableError, match="unavailable after 3 attempts") as failure:
            client.embed(["a", "b"])
    assert failure.value.indices == (0, 1)
    assert time.monotonic() - started >= 0.05 + 0.1  # two backoffs


def test_503_and_grpc_unavailable_are_retried_but_bad_input_is_not():
    options = make_options("localhost:1", "http", "m", 4, 1, 10.0, 3, 0.5, 1 << 20)
    batch = Batch()
    batch.add(0, Item(text="x"), encode_row(Item(text="x"), None, None))
    for status in ("503", "StatusCode.UNAVAILABLE"):
        step = next_step(InferenceServerException("busy", status=status), batch, 2, options, "raise", ())
        assert step == Retry(2.0)
    with pytest.raises(ItemError, match="^item 0 \\(text 'x'\\): bad$"):
        next_step(InferenceServerException("row 0: bad", status="400"), batch, 0, options, "raise", ())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_health_reports_readiness_config_and_dimensions(server, protocol):
    with EmbeddingClient(url(server, protocol), protocol) as client:
        health = client.health()
    assert health.ok and health.server_live and health.server_version
    assert health.max_batch_size == 64 and health.platform == "ensemble"
    inputs = [str(spec) for spec in health.inputs]
    assert inputs[:2] == ["TEXT BYTES [1] optional", "IMAGE BYTES [-1] optional"]
    compact = ["EMBEDDING_FP16", "EMBEDDING_INT8", "EMBEDDING_UINT8", "EMBEDDING_BINARY", "EMBEDDING_UBINARY"]
    assert [spec.name for spec in health.outputs] == ["EMBEDDING", "TOKEN_COUNT", *compact]
    assert dict(health.steps) == {"qwen3_vl_embedding_preprocess": True, "qwen3_vl_embedding_model": True}
    assert health.dimensions == 128
    reranker = health.reranker
    assert reranker is not None and reranker.name == "qwen3_vl_reranker" and reranker.ready
    assert reranker.platform == "ensemble" and reranker.max_batch_size == 64
    assert [spec.name for spec in reranker.outputs] == ["SCORE", "TOKEN_COUNT"]
    assert dict(reranker.steps) == {"qwen3_vl_reranker_preprocess": True, "qwen3_vl_reranker_model": True}
    assert health.embedding.steps == health.steps and health.embedding.ready

    async def run():
        async with AsyncEmbeddingClient(url(server, protocol), protocol) as client:
            return await client.health(probe=False)

    report = asyncio.run(run())
    assert report.ok and report.dimensions is None and report.reranker == reranker


def test_health_of_a_missing_server_says_why():
    with EmbeddingClient(f"127.0.0.1:{free_port()}") as client:
        health = client.health()
    assert not health.ok and not health.server_live and "refused" in (health.error or "").lower()
    assert health.reranker is None


def test_wrong_argument_types_fail_before_any_request():
    with pytest.raises(TypeError, match="images must be a path, bytes or a PIL image"):
        Item(images=[123])
    with pytest.raises(TypeError, match="text must be a str"):
        Item(text=b"bytes")
    with pytest.raises(ValueError, match="protocol"):
        EmbeddingClient("localhost:8000", "websocket")  # type: ignore[arg-type]
