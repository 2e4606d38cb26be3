"""Video decoding (PyAV), frame sampling, resizing and timestamps, matching qwen-vl-utils 0.0.14 for files.

qwen-vl-utils reads a file with torchvision/decord/torchcodec, samples `nframes` frames evenly
(`linspace(0, total-1, nframes).round()`), resizes them with torchvision's bicubic+antialias resize, and the
4.57.3 processor prints the mean timestamp of each 2-frame group into the prompt. We decode with PyAV
(what torchvision's reader uses), converting to RGB only the frames we keep.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

from backend.errors import InputError
from backend.media.image import FACTOR, TEMPORAL_PATCH_SIZE, VisionPatches, patchify, smart_resize
from backend.media.resize import resize_bicubic_antialias

FPS_MIN_FRAMES = 4
FRAME_FACTOR = 2


@dataclass(frozen=True)
class VideoLimits:
    max_bytes: int
    max_seconds: float
    max_frame_pixels: int
    max_decoded_frames: int


@dataclass(frozen=True)
class SampledVideo:
    frames: np.ndarray  # uint8 [T, H, W, 3], the sampled frames at the source size
    frame_indices: list[int]
    source_fps: float
    total_frames: int


def sample_count(total_frames: int, video_fps: float, fps: float, max_frames: int) -> int:
    """qwen-vl-utils' `smart_nframes` for fps sampling: frames at `fps`, within [4, max], even."""
    min_frames = math.ceil(FPS_MIN_FRAMES / FRAME_FACTOR) * FRAME_FACTOR
    max_frames = math.floor(min(max_frames, total_frames) / FRAME_FACTOR) * FRAME_FACTOR
    wanted = total_frames / video_fps * fps
    count = min(min(max(wanted, min_frames), max_frames), total_frames)
    count = math.floor(count / FRAME_FACTOR) * FRAME_FACTOR
    if not FRAME_FACTOR <= count <= total_frames:
        raise InputError(f"video has {total_frames} frame(s); at least {FRAME_FACTOR} are needed")
    return int(count)


def sample_indices(total_frames: int, count: int) -> list[int]:
    return np.linspace(0, total_frames - 1, count).round().astype(int).tolist()


def group_timestamps(frame_indices: list[int], video_fps: float) -> list[float]:
    """Mean time of the first and last frame of each 2-frame group (`_calculate_timestamps`)."""
    indices = list(frame_indices)
    if len(indices) % TEMPORAL_PATCH_SIZE:
        indices.extend([indices[-1]] * (TEMPORAL_PATCH_SIZE - len(indices) % TEMPORAL_PATCH_SIZE))
    seconds = [index / video_fps for index in indices]
    return [
        (seconds[i] + seconds[i + TEMPORAL_PATCH_SIZE - 1]) / 2
        for i in range(0, len(seconds), TEMPORAL_PATCH_SIZE)
    ]


def _open_container(data: bytes):
    import av  # imported here so that text-only tooling does not pay for FFmpeg

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except Exception as error:
        raise InputError(f"bytes are not a decodable video ({type(error).__name__}: {error})") from None
    if not container.streams.video:
        container.close()
        raise InputError("the file has no video stream")
    return container


def _check_header(container, limits: VideoLimits) -> None:
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > limits.max_frame_pixels:
        raise InputError(
            f"video frames are {width}x{height}, over the limit of {limits.max_frame_pixels} pixels"
        )
    seconds = None
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / 1_000_000
    if seconds is not None and seconds > limits.max_seconds:
        raise InputError(f"video lasts {seconds:.1f} s, over the limit of {limits.max_seconds:g} s")


def _source_fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if rate is None or float(rate) <= 0:
        raise InputError("video has no usable frame rate")
    return float(rate)


def _count_packets(data: bytes) -> int:
    """Frames the container holds, by demuxing only (one packet per frame for the codecs we accept)."""
    container = _open_container(data)
    try:
        return sum(1 for packet in container.demux(video=0) if packet.size)
    finally:
        container.close()


def _decode_selected(data: bytes, wanted: set[int], limits: VideoLimits) -> tuple[dict[int, np.ndarray], int]:
    """RGB arrays of the frames whose decode-order index is in `wanted`, and the number of frames decoded."""
    container = _open_container(data)
    kept: dict[int, np.ndarray] = {}
    decoded = 0
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if decoded in wanted:
                kept[decoded] = frame.to_ndarray(format="rgb24")
            decoded += 1
            if decoded > limits.max_decoded_frames:
                raise InputError(f"video has over {limits.max_decoded_frames} frames")
    except InputError:
        raise
    except Exception as error:
        raise InputError(f"video could not be decoded ({type(error).__name__}: {error})") from None
    finally:
        container.close()
    return kept, decoded


def decode_and_sample(data: bytes, fps: float, max_frames: int, limits: VideoLimits) -> SampledVideo:
    """Decode an encoded video and keep `sample_count` evenly spaced frames of it."""
    if not data:
        raise InputError("video is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise InputError(f"video is {len(data)} bytes, over the limit of {limits.max_bytes} bytes")
    container = _open_container(data)
    try:
        _check_header(container, limits)
        source_fps = _source_fps(container.streams.video[0])
    finally:
        container.close()

    total = _count_packets(data)
    for _attempt in range(2):
        if total < 1:
            raise InputError("video has no frames")
        indices = sample_indices(total, sample_count(total, source_fps, fps, max_frames))
        kept, decoded = _decode_selected(data, set(indices), limits)
        if decoded == total:
            frames = np.stack([kept[index] for index in indices])
            return SampledVideo(
                frames=frames, frame_indices=indices, source_fps=source_fps, total_frames=total
            )
        # The packet count was off (a codec with frames spread over packets): sample again on the true count.
        total = decoded
    raise InputError("video frame count is unstable between decodes")


def resize_frames(frames: np.ndarray, min_pixels: int, max_pixels: int) -> np.ndarray:
    """uint8 [T, H, W, 3] -> uint8 [T, h, w, 3] at the smart-resized size, with torchvision's tensor resize
    semantics (bicubic, antialias, align_corners=False, then clamp and round back to uint8), in numpy."""
    _, height, width, _ = frames.shape
    resized_height, resized_width = smart_resize(height, width, FACTOR, min_pixels, max_pixels)
    return resize_bicubic_antialias(frames, resized_height, resized_width)


def frame_max_pixels(frame_count: int, min_pixels: int, max_pixels: int, total_pixels: float | None) -> int:
    """qwen-vl-utils' per-frame budget: the cap, lowered when a total budget is spread over many frames."""
    budget = (
        max_pixels if total_pixels is None else min(max_pixels, total_pixels / frame_count * FRAME_FACTOR)
    )
    return int(max(budget, int(min_pixels * 1.05)))


# Files get qwen-vl-utils' default total budget: MODEL_SEQ_LEN (128000) tokens x 32 x 32 x 0.9.
FILE_TOTAL_PIXELS = 128000 * FACTOR * FACTOR * 0.9


@dataclass(frozen=True)
class PreparedVideo:
    patches: VisionPatches
    timestamps: list[float]


def video_patches(
    data: bytes, fps: float, max_frames: int, min_pixels: int, max_pixels: int, limits: VideoLimits
) -> PreparedVideo:
    sampled = decode_and_sample(data, fps, max_frames, limits)
    frame_count = len(sampled.frame_indices)
    cap = frame_max_pixels(frame_count, min_pixels, max_pixels, FILE_TOTAL_PIXELS)
    frames = resize_frames(sampled.frames, min_pixels, cap)
    if frame_count % TEMPORAL_PATCH_SIZE:  # cannot happen after sample_count, kept for frame lists
        frames = np.concatenate([frames, frames[-1:]], axis=0)
    return PreparedVideo(
        patches=patchify(frames), timestamps=group_timestamps(sampled.frame_indices, sampled.source_fps)
    )
