"""Decoding and preparing the images and videos of one item (or one side of a rerank pair)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from backend.errors import InputError
from backend.media.image import image_patches
from backend.media.memory import release_freed_memory
from backend.media.video import PreparedVideo, VideoLimits, video_patches
from backend.protocol import MERGE_SIZE, VisionPatches
from backend.settings import VisionSettings

_P = TypeVar("_P")


@dataclass(frozen=True)
class PreparedMedia:
    images: tuple[VisionPatches, ...] = ()
    videos: tuple[PreparedVideo, ...] = ()

    def __add__(self, other: PreparedMedia) -> PreparedMedia:
        """Media of two prompt parts in prompt order (this part's placeholders come first)."""
        return PreparedMedia(self.images + other.images, self.videos + other.videos)

    @property
    def image_token_counts(self) -> list[int]:
        return [image.token_count for image in self.images]

    @property
    def video_group_token_counts(self) -> list[int]:
        """Tokens per 2-frame group, each group having its own placeholder in the prompt."""
        counts = []
        for video in self.videos:
            t, h, w = video.patches.grid_thw
            counts.extend([h * w // (MERGE_SIZE * MERGE_SIZE)] * t)
        return counts

    @property
    def video_timestamps(self) -> list[list[float]]:
        return [video.timestamps for video in self.videos]

    @property
    def video_patches(self) -> tuple[VisionPatches, ...]:
        return tuple(video.patches for video in self.videos)


class MediaPreparer:
    """Images and videos -> patches, with the configured limits; adds seconds spent to `timings`.

    `max_tokens` (the embedder's max_length) bounds the LLM tokens of one item's images and videos
    together: an item over it would be refused after tokenisation anyway (its vision tokens cannot be
    truncated), so each image and video is refused as soon as its header shows that it does not fit, before
    its pixels are decoded. None (the reranker, whose truncation keeps every vision token) sets no bound."""

    def __init__(self, vision: VisionSettings, timings: dict[str, float], max_tokens: int | None = None):
        self.vision = vision
        self.timings = timings
        self.max_tokens = max_tokens
        self.video_limits = VideoLimits(
            max_bytes=vision.max_video_bytes,
            max_seconds=vision.max_video_seconds,
            max_frame_pixels=vision.max_video_frame_pixels,
            max_decoded_frames=vision.max_video_decoded_frames,
            containers=vision.video_containers,
        )

    def prepare(self, images: tuple[bytes, ...], videos: tuple[bytes, ...], label: str = "") -> PreparedMedia:
        """`label` prefixes the input names in errors (e.g. "QUERY_" -> "QUERY_IMAGE[0]: ...")."""
        vision = self.vision
        if len(images) > vision.max_images_per_item:
            raise InputError(
                f"{len(images)} images, over the limit of {vision.max_images_per_item}", input=f"{label}IMAGE"
            )
        if len(videos) > vision.max_videos_per_item:
            raise InputError(
                f"{len(videos)} videos, over the limit of {vision.max_videos_per_item}", input=f"{label}VIDEO"
            )
        if not images and not videos:
            return PreparedMedia()
        try:
            return self._prepare(images, videos, label)
        finally:
            # The decoded frames and planes are freed by now (errors carry no frames, see _each): give their
            # pages back, or the process keeps its largest item's worth of heap for good.
            release_freed_memory()

    def _prepare(self, images: tuple[bytes, ...], videos: tuple[bytes, ...], label: str) -> PreparedMedia:
        vision = self.vision
        budget = _TokenBudget(self.max_tokens)
        started = time.perf_counter()
        prepared_videos = _each(
            f"{label}VIDEO",
            videos,
            lambda data: video_patches(
                data,
                vision.video_fps,
                vision.video_max_frames,
                vision.video_min_pixels,
                vision.video_max_pixels,
                self.video_limits,
                max_tokens=budget.left,
            ),
            lambda video: budget.spend(video.patches.token_count),
        )
        after_videos = time.perf_counter()
        prepared_images = _each(
            f"{label}IMAGE",
            images,
            lambda data: image_patches(
                data,
                vision.image_min_pixels,
                vision.image_max_pixels,
                vision.max_image_bytes,
                vision.max_image_pixels,
                max_tokens=budget.left,
            ),
            lambda image: budget.spend(image.token_count),
        )
        self.timings["video"] += after_videos - started
        self.timings["image"] += time.perf_counter() - after_videos
        return PreparedMedia(prepared_images, prepared_videos)


class _TokenBudget:
    """The LLM tokens an item has left for its media (None: unbounded)."""

    def __init__(self, tokens: int | None):
        self.left = tokens

    def spend(self, tokens: int) -> None:
        if self.left is not None:
            self.left -= tokens


def _each(
    name: str, blobs: Sequence[bytes], prepare: Callable[[bytes], _P], done: Callable[[_P], None]
) -> tuple[_P, ...]:
    """`prepare` of every blob, then `done` of its result; an InputError names the blob as `name[i]`.

    The error is raised without the traceback it came with, whose frames would keep the decoder's buffers
    (a whole video's frames) alive until the request's response is sent, and without a reference cycle
    (error -> traceback -> this frame -> error) that would keep the request's inputs until a full garbage
    collection."""
    prepared = []
    for number, data in enumerate(blobs):
        failure = None
        try:
            prepared.append(prepare(data))
        except InputError as error:
            failure = error.at_input(f"{name}[{number}]")
        if failure is not None:
            try:
                raise failure.with_traceback(None)
            finally:
                failure = None
        done(prepared[-1])
    return tuple(prepared)
