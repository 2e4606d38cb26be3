"""The embedding preprocess step: public request tensors -> items -> token ids and patches per row."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from backend import chat
from backend.errors import ConfigError, InputError
from backend.media import MediaPreparer
from backend.records import EmbeddingItem, PreparedItem
from backend.settings import PreprocessSettings
from backend.tokenization import PromptTokenizer
from backend.wire import pack_rows

logger = logging.getLogger(__name__)

MIN_DIMENSIONS = 64

_Record = TypeVar("_Record")


def decode_text(value: object, name: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as error:
            raise InputError(f"{name} is not valid UTF-8 ({error.reason} at byte {error.start})") from None
    raise InputError(f"{name} must be BYTES, got {type(value).__name__}")


def row_blobs(values: np.ndarray | None, row: int) -> tuple[bytes, ...]:
    """Non-empty encoded files of one row; empty elements pad ragged rows and are ignored."""
    if values is None:
        return ()
    return tuple(
        bytes(v) for v in np.asarray(values[row], dtype=object).reshape(-1) if v is not None and len(v)
    )


def row_scalar(values: np.ndarray | None, row: int):
    if values is None:
        return None
    flat = np.asarray(values[row]).reshape(-1)
    if flat.size != 1:
        raise InputError(f"expected one value per row, got {flat.size}")
    return flat[0]


def batch_size_of(inputs: Mapping[str, np.ndarray | None]) -> int:
    sizes = {name: int(value.shape[0]) for name, value in inputs.items() if value is not None}
    if not sizes:
        raise InputError("request has no inputs; send at least one of TEXT, IMAGE or VIDEO")
    if len(set(sizes.values())) != 1:
        raise InputError(f"inputs disagree on the batch size: {sizes}")
    return next(iter(sizes.values()))


def parse_items(inputs: Mapping[str, np.ndarray | None]) -> list[EmbeddingItem]:
    """The public tensors (TEXT, IMAGE, VIDEO, INSTRUCTION, DIMENSIONS) as one item per batch row."""
    items = []
    for row in range(batch_size_of(inputs)):
        try:
            text = row_scalar(inputs.get("TEXT"), row)
            instruction = row_scalar(inputs.get("INSTRUCTION"), row)
            dimensions = row_scalar(inputs.get("DIMENSIONS"), row)
            items.append(
                EmbeddingItem(
                    text=None if text is None else (decode_text(text, "TEXT") or None),
                    images=row_blobs(inputs.get("IMAGE"), row),
                    videos=row_blobs(inputs.get("VIDEO"), row),
                    instruction=None if instruction is None else decode_text(instruction, "INSTRUCTION"),
                    dimensions=0 if dimensions is None else int(dimensions),
                )
            )
        except InputError as error:
            raise error.at_row(row) from None
    return items


def prepare_each(
    records: Sequence[_Record], prepare: Callable[[_Record], PreparedItem]
) -> list[PreparedItem]:
    """Every row of one request; the first bad row fails the request with an error naming it."""
    prepared = []
    for row, record in enumerate(records):
        try:
            prepared.append(prepare(record))
        except InputError as error:
            raise error.at_row(row) from None
    return prepared


def read_hidden_size(model_path: str) -> int:
    config_file = Path(model_path) / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read {config_file}: {error}") from error
    text_config = config.get("text_config", config)
    return int(text_config["hidden_size"])


class EmbeddingPreprocessor:
    """Chat formatting, tokenisation, image and video preparation for Qwen3-VL-Embedding."""

    def __init__(self, settings: PreprocessSettings):
        self.settings = settings
        self.tokenizer = PromptTokenizer(settings.model_path)
        self.hidden_size = read_hidden_size(settings.model_path)
        logger.info(
            "preprocessing for %s (hidden %d, max_length %d)",
            settings.model_path,
            self.hidden_size,
            settings.max_length,
        )
        # Seconds spent per modality, read by the metrics exporter.
        self.timings: dict[str, float] = {"text": 0.0, "image": 0.0, "video": 0.0}
        self.media = MediaPreparer(settings.vision, self.timings)

    def check_dimensions(self, dimensions: int) -> int:
        if dimensions == 0:
            return 0
        if not MIN_DIMENSIONS <= dimensions <= self.hidden_size:
            raise InputError(
                f"DIMENSIONS must be between {MIN_DIMENSIONS} and {self.hidden_size}, got {dimensions}"
            )
        return dimensions

    def prepare(self, item: EmbeddingItem) -> PreparedItem:
        if not item.has_content:
            raise InputError("row has no content: send TEXT, IMAGE or VIDEO")
        dimensions = self.check_dimensions(item.dimensions)
        media = self.media.prepare(item.images, item.videos)
        started = time.perf_counter()
        prompt = chat.embedding_prompt(
            chat.normalize_instruction(item.instruction, self.settings.default_instruction),
            item.text,
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

    def pack(self, rows: list[PreparedItem]) -> dict[str, np.ndarray]:
        return pack_rows(rows, self.tokenizer.pad_token_id)

    def prepare_request(self, inputs: Mapping[str, np.ndarray | None]) -> list[PreparedItem]:
        return prepare_each(parse_items(inputs), self.prepare)
