"""The embedding preprocess step: public request tensors -> items -> token ids and patches per row."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from backend import chat
from backend.errors import ConfigError, InputError
from backend.records import EmbeddingItem, PreparedItem
from backend.settings import PreprocessSettings
from backend.tokenization import PromptTokenizer
from backend.video import VideoLimits, video_patches
from backend.vision import image_patches

logger = logging.getLogger(__name__)

MIN_DIMENSIONS = 64


def _text(value: object, name: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as error:
            raise InputError(f"{name} is not valid UTF-8 ({error.reason} at byte {error.start})") from None
    raise InputError(f"{name} must be BYTES, got {type(value).__name__}")


def _blobs(values: np.ndarray | None, row: int) -> tuple[bytes, ...]:
    """Non-empty encoded files of one row; empty elements pad ragged rows and are ignored."""
    if values is None:
        return ()
    return tuple(
        bytes(v) for v in np.asarray(values[row], dtype=object).reshape(-1) if v is not None and len(v)
    )


def _scalar(values: np.ndarray | None, row: int):
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
            text = _scalar(inputs.get("TEXT"), row)
            instruction = _scalar(inputs.get("INSTRUCTION"), row)
            dimensions = _scalar(inputs.get("DIMENSIONS"), row)
            items.append(
                EmbeddingItem(
                    text=None if text is None else (_text(text, "TEXT") or None),
                    images=_blobs(inputs.get("IMAGE"), row),
                    videos=_blobs(inputs.get("VIDEO"), row),
                    instruction=None if instruction is None else _text(instruction, "INSTRUCTION"),
                    dimensions=0 if dimensions is None else int(dimensions),
                )
            )
        except InputError as error:
            raise error.at_row(row) from None
    return items


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
        vision = settings.vision
        self.video_limits = VideoLimits(
            max_bytes=vision.max_video_bytes,
            max_seconds=vision.max_video_seconds,
            max_frame_pixels=vision.max_video_frame_pixels,
            max_decoded_frames=vision.max_video_decoded_frames,
        )
        logger.info(
            "preprocessing for %s (hidden %d, max_length %d)",
            settings.model_path,
            self.hidden_size,
            settings.max_length,
        )
        # Seconds spent per modality, read by the metrics exporter.
        self.timings: dict[str, float] = {"text": 0.0, "image": 0.0, "video": 0.0}

    def check_dimensions(self, dimensions: int) -> int:
        if dimensions == 0:
            return 0
        if not MIN_DIMENSIONS <= dimensions <= self.hidden_size:
            raise InputError(
                f"DIMENSIONS must be between {MIN_DIMENSIONS} and {self.hidden_size}, got {dimensions}"
            )
        return dimensions

    def prepare(self, item: EmbeddingItem) -> PreparedItem:
        vision = self.settings.vision
        if not item.has_content:
            raise InputError("row has no content: send TEXT, IMAGE or VIDEO")
        if len(item.images) > vision.max_images_per_item:
            raise InputError(
                f"row has {len(item.images)} images, over the limit of {vision.max_images_per_item}"
            )
        if len(item.videos) > vision.max_videos_per_item:
            raise InputError(
                f"row has {len(item.videos)} videos, over the limit of {vision.max_videos_per_item}"
            )
        dimensions = self.check_dimensions(item.dimensions)

        started = time.perf_counter()
        videos = []
        for number, data in enumerate(item.videos):
            try:
                videos.append(
                    video_patches(
                        data,
                        vision.video_fps,
                        vision.video_max_frames,
                        vision.video_min_pixels,
                        vision.video_max_pixels,
                        self.video_limits,
                    )
                )
            except InputError as error:
                raise InputError(f"VIDEO[{number}]: {error}") from None
        after_video = time.perf_counter()
        images = []
        for number, data in enumerate(item.images):
            try:
                images.append(
                    image_patches(
                        data,
                        vision.image_min_pixels,
                        vision.image_max_pixels,
                        vision.max_image_bytes,
                        vision.max_image_pixels,
                    )
                )
            except InputError as error:
                raise InputError(f"IMAGE[{number}]: {error}") from None
        after_image = time.perf_counter()

        prompt = chat.embedding_prompt(
            chat.normalize_instruction(item.instruction, self.settings.default_instruction),
            item.text,
            image_count=len(images),
            video_timestamps=[video.timestamps for video in videos],
        )
        group_counts = []
        for video in videos:
            t, h, w = video.patches.grid_thw
            group_counts.extend([h * w // 4] * t)
        input_ids = self.tokenizer.encode(
            prompt,
            image_token_counts=[image.token_count for image in images],
            video_group_token_counts=group_counts,
            max_length=self.settings.max_length,
        )
        finished = time.perf_counter()
        self.timings["video"] += after_video - started
        self.timings["image"] += after_image - after_video
        self.timings["text"] += finished - after_image
        return PreparedItem(
            input_ids=input_ids,
            images=tuple(images),
            videos=tuple(video.patches for video in videos),
            dimensions=dimensions,
        )

    def prepare_request(self, inputs: Mapping[str, np.ndarray | None]) -> list[PreparedItem]:
        """Every row of one request; the first bad row fails the request with an error naming it."""
        prepared = []
        for row, item in enumerate(parse_items(inputs)):
            try:
                prepared.append(self.prepare(item))
            except InputError as error:
                raise error.at_row(row) from None
        return prepared
