"""The reranker preprocess step: (query, document) pairs -> the official prompt -> token ids and patches.

Same vision and tokenisation pieces as the embedding path; what differs is the prompt (fixed system prompt,
`<Instruct>/<Query>/<Document>` layout), the default instruction, and truncation (max_length 10240,
special tokens and the last 5 tokens always kept), all as in the official `Qwen3VLReranker`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from backend import chat
from backend.errors import InputError
from backend.media import MediaPreparer, PreparedMedia
from backend.preprocess import batch_size_of, decode_text, prepare_each, row_blobs, row_scalar
from backend.records import PreparedItem
from backend.settings import RerankPreprocessSettings
from backend.tokenization import PromptTokenizer, truncate_keeping_special
from backend.wire import pack_rows

logger = logging.getLogger(__name__)

SIDES = ("QUERY", "DOCUMENT")


@dataclass(frozen=True)
class PairSide:
    text: str | None = None
    images: tuple[bytes, ...] = ()
    videos: tuple[bytes, ...] = ()

    @property
    def has_content(self) -> bool:
        return bool(self.text) or bool(self.images) or bool(self.videos)


@dataclass(frozen=True)
class RerankPair:
    """One batch row of the reranker contract."""

    query: PairSide
    document: PairSide
    instruction: str | None = None


def _side(inputs: Mapping[str, np.ndarray | None], prefix: str, row: int) -> PairSide:
    text = row_scalar(inputs.get(f"{prefix}_TEXT"), row)
    return PairSide(
        text=None if text is None else (decode_text(text, f"{prefix}_TEXT") or None),
        images=row_blobs(inputs.get(f"{prefix}_IMAGE"), row),
        videos=row_blobs(inputs.get(f"{prefix}_VIDEO"), row),
    )


def parse_pairs(inputs: Mapping[str, np.ndarray | None]) -> list[RerankPair]:
    """QUERY_*/DOCUMENT_* TEXT, IMAGE, VIDEO and INSTRUCTION tensors as one pair per batch row."""
    pairs = []
    for row in range(batch_size_of(inputs)):
        try:
            instruction = row_scalar(inputs.get("INSTRUCTION"), row)
            pairs.append(
                RerankPair(
                    query=_side(inputs, "QUERY", row),
                    document=_side(inputs, "DOCUMENT", row),
                    instruction=None if instruction is None else decode_text(instruction, "INSTRUCTION"),
                )
            )
        except InputError as error:
            raise error.at_row(row) from None
    return pairs


def _prompt_side(side: PairSide, media: PreparedMedia) -> chat.PromptSide:
    return chat.PromptSide(
        text=side.text, image_count=len(media.images), video_timestamps=media.video_timestamps
    )


class RerankPreprocessor:
    def __init__(self, settings: RerankPreprocessSettings):
        self.settings = settings
        self.tokenizer = PromptTokenizer(settings.model_path)
        self.timings: dict[str, float] = {"text": 0.0, "image": 0.0, "video": 0.0}
        self.media = MediaPreparer(settings.vision, self.timings)
        logger.info("reranker preprocessing for %s (max_length %d)", settings.model_path, settings.max_length)

    def prepare(self, pair: RerankPair) -> PreparedItem:
        for name, side in zip(SIDES, (pair.query, pair.document)):
            if not side.has_content:
                raise InputError(
                    f"the {name.lower()} has no content: send {name}_TEXT, {name}_IMAGE or {name}_VIDEO"
                )
        query_media = self.media.prepare(pair.query.images, pair.query.videos, label="QUERY_")
        document_media = self.media.prepare(pair.document.images, pair.document.videos, label="DOCUMENT_")
        started = time.perf_counter()
        media = query_media + document_media  # placeholders appear query first, then document
        prompt = chat.rerank_prompt(
            pair.instruction or self.settings.default_instruction,
            _prompt_side(pair.query, query_media),
            _prompt_side(pair.document, document_media),
        )
        ids = self.tokenizer.encode(
            prompt,
            image_token_counts=media.image_token_counts,
            video_group_token_counts=media.video_group_token_counts,
        )
        ids = truncate_keeping_special(ids, self.settings.max_length, self.tokenizer.special_ids)
        self.timings["text"] += time.perf_counter() - started
        return PreparedItem(input_ids=ids, images=media.images, videos=media.video_patches)

    def pack(self, rows: list[PreparedItem]) -> dict[str, np.ndarray]:
        return pack_rows(rows, self.tokenizer.pad_token_id, with_dimensions=False)

    def prepare_request(self, inputs: Mapping[str, np.ndarray | None]) -> list[PreparedItem]:
        return prepare_each(parse_pairs(inputs), self.prepare)
