"""The reranker preprocess step: (query, document) pairs -> the official prompt -> token ids and patches.

Same vision and tokenisation pieces as the embedding path; what differs is the prompt (fixed system prompt,
`<Instruct>/<Query>/<Document>` layout), the default instruction, and truncation (max_length 10240,
special tokens and the last 5 tokens always kept), all as in the official `Qwen3VLReranker`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import numpy as np

from backend.errors import InputError
from backend.media.preparer import MediaPreparer, PreparedMedia
from backend.protocol import (
    RERANK_SIDES,
    PreparedItem,
    RerankPair,
    check_text_bytes,
    parse_pairs,
    prepare_each,
)
from backend.settings import RerankPreprocessSettings
from backend.text import chat
from backend.text.tokenization import PromptTokenizer, truncate_keeping_special
from backend.wire import pack_rows

logger = logging.getLogger(__name__)


def _prompt_side(text: str | None, media: PreparedMedia) -> chat.PromptSide:
    return chat.PromptSide(text=text, image_count=len(media.images), video_timestamps=media.video_timestamps)


class RerankPreprocessor:
    def __init__(self, settings: RerankPreprocessSettings):
        self.settings = settings
        self.tokenizer = PromptTokenizer(settings.model_path)
        self.timings: dict[str, float] = {"text": 0.0, "image": 0.0, "video": 0.0}
        self.media = MediaPreparer(settings.vision, self.timings)
        logger.info("reranker preprocessing for %s (max_length %d)", settings.model_path, settings.max_length)

    def prepare(self, pair: RerankPair) -> PreparedItem:
        for name, side in zip(RERANK_SIDES, (pair.query, pair.document)):
            if not side.has_content:
                raise InputError(
                    f"the {name.lower()} has no content: send {name}_TEXT, {name}_IMAGE or {name}_VIDEO"
                )
            check_text_bytes(side.text, self.settings.max_text_bytes, f"{name}_TEXT")
        check_text_bytes(pair.instruction, self.settings.max_text_bytes, "INSTRUCTION")
        query_media = self.media.prepare(pair.query.images, pair.query.videos, label="QUERY_")
        document_media = self.media.prepare(pair.document.images, pair.document.videos, label="DOCUMENT_")
        started = time.perf_counter()
        media = query_media + document_media  # placeholders appear query first, then document
        max_length = self.settings.max_length

        def bounded(text: str | None) -> str | None:
            return None if text is None else self.tokenizer.bounded(text, max_length)

        prompt = chat.rerank_prompt(
            bounded(pair.instruction) or self.settings.default_instruction,
            _prompt_side(bounded(pair.query.text), query_media),
            _prompt_side(bounded(pair.document.text), document_media),
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
