"""Cohere's embed API v2 (``POST /v2/embed``, https://docs.cohere.com/reference/embed), as vLLM 0.33 also
serves it, with Cohere's full ``embedding_types``: float, int8, uint8, binary, ubinary and base64.

Request: exactly one of ``texts``, ``images`` (data/http/file URLs) or ``inputs`` (``{"content": [parts]}``,
parts ``{"type": "text", "text"}`` / ``{"type": "image_url", "image_url": {"url"}}``); ``input_type``
``search_query`` embeds with the query task instruction, any other with the model's default (documents);
``output_dimension`` is ``dimensions`` (cut, normalise, then quantise). Response:
``{"id", "embeddings": {type: [...]}, "texts", "meta": {"api_version": {"version": "2"}, "billed_units":
{"input_tokens"}}, "response_type": "embeddings_by_type"}``, with only the types asked for.

The compact types are ``qwen3vl_client.bulk.quantize``'s (the same bytes as the embedding ensemble's
EMBEDDING_* outputs): int8/uint8 on the documented fixed range, binary/ubinary packed bits, first dimension
in the high bit. One difference from vLLM's Cohere route: a component of exactly 0 is a 0 bit here (vLLM
sets it), and widths that are not a multiple of 8 are padded with 0 bits instead of refused.
"""

from __future__ import annotations

import base64
import importlib
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.errors import GatewayError, Kind
from gateway.items import Item
from gateway.protocol import INT32_MAX, Priority
from gateway.serving import Gateway
from qwen3vl_client.options import DEFAULT_QUERY_TASK

# The module (the package exports a function of the same name).
quantize = importlib.import_module("qwen3vl_client.bulk.quantize")

EMBED_PATHS = ("/v2/embed",)
CohereEmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CohereImageURL(_Request):
    url: str


class CohereContent(_Request):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: CohereImageURL | None = None

    @model_validator(mode="after")
    def _payload(self) -> CohereContent:
        if self.type == "text" and self.text is None:
            raise ValueError("CohereEmbedContent with type='text' requires text")
        if self.type == "image_url" and self.image_url is None:
            raise ValueError("CohereEmbedContent with type='image_url' requires image_url.url")
        return self


class CohereInput(_Request):
    content: list[CohereContent] = Field(min_length=1)


class CohereEmbedRequest(_Request):
    model: str | None = None
    input_type: str | None = None
    texts: list[str] | None = None
    images: list[str] | None = None
    inputs: list[CohereInput] | None = None
    output_dimension: Annotated[int, Field(le=INT32_MAX)] | None = None
    embedding_types: list[CohereEmbeddingType] | None = None
    truncate: Literal["NONE", "START", "END"] = "END"
    max_tokens: int | None = None
    priority: Priority = 0
    request_id: str | None = None

    @model_validator(mode="after")
    def _one_input(self) -> CohereEmbedRequest:
        given = [field for field in (self.texts, self.images, self.inputs) if field is not None]
        if len(given) != 1 or not given[0]:
            raise ValueError(
                "Exactly one of texts, images, or inputs must be provided, and it must be non-empty"
            )
        if self.output_dimension is not None and self.output_dimension < 1:
            raise ValueError("output_dimension must be a positive integer")
        return self


class CohereApiVersion(BaseModel):
    version: str = "2"


class CohereBilledUnits(BaseModel):
    input_tokens: int


class CohereMeta(BaseModel):
    api_version: CohereApiVersion = Field(default_factory=CohereApiVersion)
    billed_units: CohereBilledUnits


class CohereEmbedResponse(BaseModel):
    id: str
    embeddings: dict[str, list[Any]]
    texts: list[str] | None = None
    meta: CohereMeta
    response_type: Literal["embeddings_by_type"] = "embeddings_by_type"


def typed_embeddings(vectors: np.ndarray, types: list[str]) -> dict[str, list[Any]]:
    """The vectors (float32 rows, already cut and normalised) in each asked type, in the order asked."""
    out: dict[str, list[Any]] = {}
    for name in dict.fromkeys(types):
        if name == "float":
            out[name] = vectors.astype(np.float32).tolist()
        elif name == "base64":
            out[name] = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in vectors]
        else:
            out[name] = quantize.quantize(vectors, name).tolist()
    return out


async def request_items(request: CohereEmbedRequest, gateway: Gateway) -> tuple[list[Item], str]:
    instruction = DEFAULT_QUERY_TASK if request.input_type == "search_query" else None
    fetch = gateway.fetcher.fetch
    if request.texts is not None:
        return [Item(text=text, instruction=instruction) for text in request.texts], "texts"
    if request.images is not None:
        images = [await fetch(url, f"images[{index}]") for index, url in enumerate(request.images)]
        return [Item(images=(image,), instruction=instruction) for image in images], "images"
    assert request.inputs is not None
    items = []
    for index, entry in enumerate(request.inputs):
        texts, images = [], []
        for part_index, part in enumerate(entry.content):
            if part.type == "text":
                texts.append(part.text or "")
            else:
                assert part.image_url is not None
                images.append(await fetch(part.image_url.url, f"inputs[{index}].content[{part_index}]"))
        items.append(Item(text=" ".join(texts) or None, images=tuple(images), instruction=instruction))
    return items, "inputs"


async def embed(gateway: Gateway, request: CohereEmbedRequest, request_id: str) -> CohereEmbedResponse:
    await gateway.names.check(request.model, [gateway.settings.embedding_model])
    if request.truncate != "END":
        raise GatewayError(
            Kind.UNSUPPORTED,
            f"truncate {request.truncate!r} is not supported: texts are cut at the end, as the model's "
            "official code does",
            "truncate",
        )
    if request.max_tokens is not None:
        raise GatewayError(Kind.UNSUPPORTED, "max_tokens is not supported", "max_tokens")
    items, subject = await request_items(request, gateway)
    outcome = await gateway.embed_items(items, request.output_dimension, subject)
    vectors = np.asarray(outcome.values, dtype=np.float32)
    return CohereEmbedResponse(
        id=request_id,
        embeddings=typed_embeddings(vectors, list(request.embedding_types or ["float"])),
        texts=request.texts,
        meta=CohereMeta(billed_units=CohereBilledUnits(input_tokens=sum(outcome.token_counts or ()))),
    )


# A pooling route as gateway.app registers it: its paths, its request schema and its handler.
RouteSpec = tuple[tuple[str, ...], type[BaseModel], Callable[..., Awaitable[BaseModel]]]


def routes(gateway: Gateway) -> list[RouteSpec]:
    """(paths, schema, handler) for gateway.app's pooling routes."""

    async def handler(request: CohereEmbedRequest, request_id: str) -> CohereEmbedResponse:
        return await embed(gateway, request, request_id)

    return [(EMBED_PATHS, CohereEmbedRequest, handler)]
