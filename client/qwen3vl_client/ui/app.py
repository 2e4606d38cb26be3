"""The search page's ASGI app (Starlette): the page, a JSON search route and thumbnails.

    GET  /                    the page (static/index.html, page.js, page.css)
    GET  /api/index           what is searched: rows, model, dimensions, vector type, source
    POST /api/search          {"text", "media": {"kind": "image"|"video", "data": base64}, "k", "rerank"}
    GET  /api/thumbnail?id=   a JPEG of a row's image or of one frame of its video

A query is embedded with the search task's instruction, the index searched for the k nearest rows and, with
"rerank", the best ``rerank_candidates`` of them scored again by the reranker; the answer says how long each
step took.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from qwen3vl_client.aio import AsyncEmbeddingClient
from qwen3vl_client.errors import EmbeddingError, ItemError
from qwen3vl_client.items import Item
from qwen3vl_client.ui.corpus import Corpus, CorpusError, Hit
from qwen3vl_client.ui.previews import load_document, snippet, thumbnail

STATIC = Path(__file__).parent / "static"
MAX_K = 100
MAX_BODY_BYTES = 32 * 1024 * 1024  # a dropped photo or short clip, base64-encoded
THUMBNAILS_KEPT = 512


@dataclass(frozen=True)
class PageOptions:
    task: str  # the queries' instruction
    default_k: int = 12
    rerank_candidates: int = 20  # rows the reranker scores; the best k of them are shown


class BadQuery(ValueError):
    """The page sent something that is no query (empty, bad base64, k out of range)."""


def _query(body: Any) -> tuple[Item, int, bool]:
    if not isinstance(body, dict):
        raise BadQuery("the body must be a JSON object")
    text = body.get("text")
    if text is not None and not isinstance(text, str):
        raise BadQuery("text must be a string")
    text = text.strip() if text else None
    images: tuple[bytes, ...] = ()
    videos: tuple[bytes, ...] = ()
    media = body.get("media")
    if media:
        if not isinstance(media, dict) or media.get("kind") not in ("image", "video"):
            raise BadQuery('media must be {"kind": "image" or "video", "data": base64}')
        try:
            data = base64.b64decode(str(media.get("data", "")), validate=True)
        except (binascii.Error, ValueError) as error:
            raise BadQuery(f"media data is not base64: {error}") from None
        if not data:
            raise BadQuery("media data is empty")
        if media["kind"] == "image":
            images = (data,)
        else:
            videos = (data,)
    if not (text or images or videos):
        raise BadQuery("type a query or drop an image")
    k = body.get("k", 10)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise BadQuery(f"k must be an integer from 1 to {MAX_K}")
    return Item(text=text, images=images, videos=videos), k, bool(body.get("rerank"))


def _milliseconds(seconds: float) -> float:
    return round(seconds * 1000, 1)


class SearchPage:
    """The routes' state: the index, a client of the server, a small cache of thumbnails."""

    def __init__(self, corpus: Corpus, make_client: Callable[[], AsyncEmbeddingClient], options: PageOptions):
        self.corpus = corpus
        self.make_client = make_client
        self.options = options
        self.client: AsyncEmbeddingClient | None = None
        self._thumbnails: OrderedDict[str, bytes | None] = OrderedDict()

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        # The asyncio client opens its connection inside the running loop, so it is made here.
        self.client = self.make_client()
        try:
            yield
        finally:
            await self.client.close()

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/", self.page),
                Route("/api/index", self.index_summary),
                Route("/api/search", self.search, methods=["POST"]),
                Route("/api/thumbnail", self.thumbnail),
                Mount("/static", StaticFiles(directory=STATIC), name="static"),
            ],
            lifespan=self.lifespan,
        )

    async def page(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def index_summary(self, request: Request) -> Response:
        try:
            summary = await asyncio.to_thread(lambda: self.corpus.summary)
        except CorpusError as error:
            return JSONResponse({"error": str(error)}, status_code=500)
        document = asdict(summary)
        document["default_k"] = self.options.default_k
        document["rerank_candidates"] = self.options.rerank_candidates
        return JSONResponse(document)

    async def search(self, request: Request) -> Response:
        started = time.perf_counter()
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return JSONResponse({"error": f"over {MAX_BODY_BYTES // 2**20} MiB"}, status_code=413)
        try:
            query, k, rerank = _query(await request.json())
        except BadQuery as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        assert self.client is not None
        timings: dict[str, float | None] = {"embed": None, "search": None, "rerank": None}
        try:
            summary = await asyncio.to_thread(lambda: self.corpus.summary)
            mark = time.perf_counter()
            vectors = await self.client.embed_queries(
                [query], self.options.task, dimensions=summary.dimensions
            )
            timings["embed"] = _milliseconds(time.perf_counter() - mark)
            mark = time.perf_counter()
            pool = max(k, self.options.rerank_candidates) if rerank else k
            hits = await asyncio.to_thread(self.corpus.search, vectors[0], pool)
            timings["search"] = _milliseconds(time.perf_counter() - mark)
            results: list[dict[str, Any]]
            skipped: list[dict[str, str]] = []
            if rerank and hits:
                mark = time.perf_counter()
                results, skipped = await self._rerank(query, hits, k)
                timings["rerank"] = _milliseconds(time.perf_counter() - mark)
            else:
                results = [self._card(hit) for hit in hits[:k]]
        except ItemError as error:
            return JSONResponse({"error": f"the query: {error.reason}"}, status_code=400)
        except CorpusError as error:
            return JSONResponse({"error": str(error)}, status_code=500)
        except EmbeddingError as error:
            return JSONResponse({"error": f"the server: {error}"}, status_code=502)
        for rank, card in enumerate(results, 1):
            card["rank"] = rank
        for card in results:
            card.update(await asyncio.to_thread(self._preview, card["id"]))
        timings_ms = {**timings, "total": _milliseconds(time.perf_counter() - started)}
        return JSONResponse(
            {"results": results, "reranked": rerank, "skipped": skipped, "timings_ms": timings_ms}
        )

    async def _rerank(
        self, query: Item, hits: list[Hit], k: int
    ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """The hits the reranker scores best, each with both scores; rows it could not score are listed."""
        assert self.client is not None
        records = await asyncio.to_thread(lambda: [self.corpus.record(hit.id) for hit in hits])
        missing = [hit.id for hit, record in zip(hits, records) if record is None]
        if missing:
            raise CorpusError(
                f"cannot rerank: {missing[0]!r} is not in the source (start the page with --source, the "
                "folder or table the index was built from)"
            )
        try:
            documents = await asyncio.to_thread(lambda: [load_document(r) for r in records if r])
        except OSError as error:
            raise CorpusError(f"cannot rerank: {error}") from error
        result = await self.client.rerank(query, documents, top_k=k, on_error="skip")
        skipped = [{"id": hits[error.index].id, "reason": error.reason} for error in result.errors]
        cards = []
        for index, score in result.top(k):
            card = self._card(hits[index])
            card["rerank_score"] = score
            cards.append(card)
        return cards, skipped

    @staticmethod
    def _card(hit: Hit) -> dict[str, Any]:
        return {"id": hit.id, "modality": hit.modality, "score": hit.score}

    def _preview(self, identifier: str) -> dict[str, Any]:
        """The card's thumbnail address or text snippet (neither where the source is not known)."""
        try:
            record = self.corpus.record(identifier)
        except CorpusError:
            record = None
        if record is None:
            return {"thumbnail": None, "snippet": None}
        url = None
        if record.images or record.videos:
            url = "/api/thumbnail?" + urlencode({"id": identifier})
        try:
            text = snippet(record)
        except OSError:
            text = None
        return {"thumbnail": url, "snippet": text}

    async def thumbnail(self, request: Request) -> Response:
        identifier = request.query_params.get("id", "")
        if identifier not in self._thumbnails:
            self._thumbnails[identifier] = await asyncio.to_thread(self._make_thumbnail, identifier)
            while len(self._thumbnails) > THUMBNAILS_KEPT:
                self._thumbnails.popitem(last=False)
        self._thumbnails.move_to_end(identifier)
        jpeg = self._thumbnails[identifier]
        if jpeg is None:
            return Response("no thumbnail", status_code=404, media_type="text/plain")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=300"})

    def _make_thumbnail(self, identifier: str) -> bytes | None:
        try:
            record = self.corpus.record(identifier)
            return thumbnail(record) if record is not None else None
        except Exception:  # noqa: BLE001 - an unreadable file shows as a card without a picture
            return None
