"""The embedding preprocess step: public request tensors -> items -> token ids and patches per row."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from backend.errors import ConfigError, InputError
from backend.media.preparer import MediaPreparer
from backend.protocol import (
    EmbeddingItem,
    PreparedItem,
    check_dimensions,
    check_text_bytes,
    parse_items,
    prepare_each,
)
from backend.settings import PreprocessSettings
from backend.text import chat
from backend.text.tokenization import PromptTokenizer
from backend.wire import pack_rows

logger = logging.getLogger(__name__)


def read_text_config(model_path: str) -> dict:
    """The language model's part of the checkpoint's config.json (hidden size, vocabulary size)."""
    config_file = Path(model_path) / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read {config_file}: {error}") from error
    return config.get("text_config", config)


class EmbeddingPreprocessor:
    """Chat formatting, tokenisation, image and video preparation for Qwen3-VL-Embedding."""

    def __init__(self, settings: PreprocessSettings):
        self.settings = settings
        self.tokenizer = PromptTokenizer(settings.model_path)
        text_config = read_text_config(settings.model_path)
        self.hidden_size = int(text_config["hidden_size"])
        self.vocab_size = int(text_config["vocab_size"])
        logger.info(
            "preprocessing for %s (hidden %d, max_length %d)",
            settings.model_path,
            self.hidden_size,
            settings.max_length,
        )
        # Seconds spent per modality, read by the metrics exporter.
        self.timings: dict[str, float] = {"text": 0.0, "image": 0.0, "video": 0.0}
        self.media = MediaPreparer(settings.vision, self.timings, max_tokens=settings.max_length)

    def prepare(self, item: EmbeddingItem) -> PreparedItem:
        if not item.has_content:
            raise InputError("row has no content: send TEXT, IMAGE or VIDEO")
        dimensions = check_dimensions(item.dimensions, self.hidden_size)
        limit = self.settings.max_text_bytes
        check_text_bytes(item.text, limit, "TEXT")
        check_text_bytes(item.instruction, limit, "INSTRUCTION")
        if item.raw or item.token_ids:
            return PreparedItem(input_ids=self.raw_ids(item), dimensions=dimensions)
        media = self.media.prepare(item.images, item.videos)
        started = time.perf_counter()
        max_length = self.settings.max_length
        prompt = chat.embedding_prompt(
            chat.normalize_instruction(
                None if item.instruction is None else self.tokenizer.bounded(item.instruction, max_length),
                self.settings.default_instruction,
            ),
            None if item.text is None else self.tokenizer.bounded(item.text, max_length),
            image_count=len(media.images),
            video_timestamps=media.video_timestamps,
        )
        input_ids = self.tokenizer.encode(
            prompt,
            image_token_counts=media.image_token_counts,
            video_group_token_counts=media.video_group_token_counts,
            max_length=self.settings.max_length,
        )
        self.timings["text"] += time.perf_counter() - started
        return PreparedItem(
            input_ids=input_ids, images=media.images, videos=media.video_patches, dimensions=dimensions
        )

    def raw_ids(self, item: EmbeddingItem) -> np.ndarray:
        """vLLM's completion path: TOKEN_IDS as given, or TEXT's raw tokens; no template, no instruction,
        no media. Too long is an error (vLLM answers 400 unless told to truncate; the gateway truncates)."""
        if not item.raw:
            raise InputError("TOKEN_IDS are embedded raw only: set RAW to true", input="TOKEN_IDS")
        if item.images or item.videos or item.instruction:
            raise InputError("RAW embeds text or token ids alone: leave IMAGE, VIDEO and INSTRUCTION empty")
        if item.token_ids and item.text:
            raise InputError("send TEXT or TOKEN_IDS, not both")
        started = time.perf_counter()
        if item.token_ids:
            ids = np.asarray(item.token_ids, dtype=np.int64)
            if int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size:
                raise InputError(f"token ids must be in 0..{self.vocab_size - 1}", input="TOKEN_IDS")
        else:
            ids = self.tokenizer.ids(item.text or "")
        self.timings["text"] += time.perf_counter() - started
        if len(ids) > self.settings.max_length:
            raise InputError(
                f"{len(ids)} tokens, over max_length {self.settings.max_length}",
                input="TOKEN_IDS" if item.token_ids else "TEXT",
            )
        return ids

    def pack(self, rows: list[PreparedItem]) -> dict[str, np.ndarray]:
        return pack_rows(rows, self.tokenizer.pad_token_id)

    def prepare_request(self, inputs: Mapping[str, np.ndarray | None]) -> list[PreparedItem]:
        return prepare_each(parse_items(inputs), self.prepare)
