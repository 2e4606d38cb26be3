"""Video decoding (PyAV), frame sampling, resizing and timestamps, matching qwen-vl-utils 0.0.14 for files.

qwen-vl-utils reads a file with torchvision/decord/torchcodec, samples `nframes` frames evenly
(`linspace(0, total-1, nframes).round()`), resizes them with torchvision's bicubic+antialias resize, and the
4.57.3 processor prints the mean timestamp of each 2-frame group into the prompt. We decode with PyAV
(what torchvision's reader uses), converting to RGB only the frames we keep.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from backend.errors import InputError
from backend.media.image import FACTOR, TEMPORAL_PATCH_SIZE, VisionPatches, patchify, smart_resize
from backend.media.resize import ResizePlan, resize_frame
from backend.settings import VisionSettings

FPS_MIN_FRAMES = 4
FRAME_FACTOR = 2


@dataclass(frozen=True)
class VideoLimits:
    max_bytes: int
    max_seconds: float
    max_frame_pixels: int
    max_decoded_frames: int
    containers: str = VisionSettings.video_containers  # the FFmpeg demuxers a video may use


@dataclass(frozen=True)
class SampledVideo:
    frames: np.ndarray  # uint8 [T, H, W, 3], the sampled frames (at the source size unless resized)
    frame_indices: list[int]
    source_fps: float
    total_frames: int


# (sampled frame count, source height, source width) -> the (height, width) frames are resized to.
FrameSize = Callable[[int, int, int], tuple[int, int]]


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


def _open_container(data: bytes, containers: str):
    import av  # imported here so that text-only tooling does not pay for FFmpeg

    # format_whitelist refuses any other demuxer right after probing, before it reads a header (concat
    # scripts, playlists and image patterns would open files or URLs named inside the bytes);
    # protocol_whitelist names no protocol, so no demuxer can open anything beyond the bytes given.
    options = {"format_whitelist": containers, "protocol_whitelist": "none"}
    try:
        container = av.open(io.BytesIO(data), mode="r", options=options)
    except Exception as error:
        raise InputError(
            f"bytes are not a decodable video in an accepted container ({containers}) "
            f"({type(error).__name__}: {error})"
        ) from None
    if not container.streams.video:
        container.close()
        raise InputError("the file has no video stream")
    if container.streams.video[0].codec_context is None:  # FFmpeg has no decoder for it
        container.close()
        raise InputError("the video stream's codec is not supported")
    return container


def _check_frame_pixels(width: int, height: int, limits: VideoLimits) -> None:
    if width * height > limits.max_frame_pixels:
        raise InputError(
            f"video frames are {width}x{height}, over the limit of {limits.max_frame_pixels} pixels"
        )


def _check_seconds(seconds: float, limits: VideoLimits, how: str = "") -> None:
    if seconds > limits.max_seconds:
        raise InputError(f"video lasts {seconds:.1f} s{how}, over the limit of {limits.max_seconds:g} s")


def _source_fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if rate is None or not 0 < float(rate) < math.inf:
        raise InputError("video has no usable frame rate")
    return float(rate)


@dataclass(frozen=True)
class VideoHeader:
    width: int  # 0 where the header does not say
    height: int
    fps: float
    total_frames: int  # packets of the video stream: one per frame for the codecs we accept


def read_header(data: bytes, limits: VideoLimits) -> VideoHeader:
    """Frame size, rate and count from the container and its packets (demuxed, not decoded), each checked
    against the limits. A stream without a duration (raw H.264) is bounded by its packet count."""
    container = _open_container(data, limits.containers)
    try:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width or 0, stream.codec_context.height or 0
        _check_frame_pixels(width, height, limits)
        if stream.duration is not None and stream.time_base is not None:
            _check_seconds(float(stream.duration * stream.time_base), limits)
        elif container.duration is not None:
            _check_seconds(container.duration / 1_000_000, limits)
        fps = _source_fps(stream)
        most = min(limits.max_decoded_frames, math.floor(fps * limits.max_seconds))
        total = 0
        for packet in container.demux(stream):
            if packet.size:
                total += 1
                if total > most:  # stop demuxing as soon as a limit is certainly passed
                    if total > limits.max_decoded_frames:
                        raise InputError(f"video has over {limits.max_decoded_frames} frames")
                    raise InputError(
                        f"video lasts over {limits.max_seconds:g} s ({total}+ frames at {fps:g} fps)"
                    )
    except InputError:
        raise
    except Exception as error:  # PyAV raises many types for corrupt data; all mean the same to a caller
        raise InputError(f"video could not be read ({type(error).__name__}: {error})") from None
    finally:
        container.close()
    if total < 1:
        raise InputError("video has no frames")
    return VideoHeader(width, height, fps, total)


def check_tokens(frame_count: int, height: int, width: int, max_tokens: int | None) -> None:
    """Refuse a video whose patches alone need more LLM tokens than its item has left."""
    tokens = math.ceil(frame_count / TEMPORAL_PATCH_SIZE) * (height // FACTOR) * (width // FACTOR)
    if max_tokens is not None and tokens > max_tokens:
        raise InputError(
            f"video needs {tokens} tokens ({frame_count} frames at {width}x{height}), over the "
            f"{max_tokens} its item has left of max_length; send a shorter or smaller video"
        )


def _decode_selected(
    data: bytes,
    indices: list[int],
    fps: float,
    limits: VideoLimits,
    size: FrameSize | None,
    max_tokens: int | None,
) -> tuple[np.ndarray, int]:
    """uint8 RGB frames at the decode-order `indices` (resized to `size` as each one is decoded, so the
    whole video is never held at its source size), and the number of frames decoded."""
    container = _open_container(data, limits.containers)
    wanted = {index: position for position, index in enumerate(indices)}
    frames: np.ndarray | None = None
    plan: ResizePlan | None = None
    source: tuple[int, int] | None = None
    decoded = 0
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            shape = (frame.height, frame.width)
            if source is None:
                source = shape
                _check_frame_pixels(frame.width, frame.height, limits)
                height, width = size(len(indices), *shape) if size else shape
                if size:
                    check_tokens(len(indices), height, width, max_tokens)
                    plan = ResizePlan.build(*shape, height, width)
                frames = np.empty((len(indices), height, width, 3), np.uint8)
            elif shape != source:
                raise InputError(
                    f"video frames change size mid-stream ({source[1]}x{source[0]} -> {shape[1]}x{shape[0]})"
                )
            position = wanted.get(decoded)
            if position is not None:
                assert frames is not None  # allocated at the first frame
                rgb = frame.to_ndarray(format="rgb24")
                if plan is None:
                    frames[position] = rgb
                else:
                    resize_frame(rgb, plan, frames[position])
            decoded += 1
            if decoded > limits.max_decoded_frames:
                raise InputError(f"video has over {limits.max_decoded_frames} frames")
            if decoded > fps * limits.max_seconds:
                _check_seconds(decoded / fps, limits, f" ({decoded} frames at {fps:g} fps)")
    except InputError:
        raise
    except Exception as error:
        raise InputError(f"video could not be decoded ({type(error).__name__}: {error})") from None
    finally:
        container.close()
    if frames is None:
        raise InputError("video has no decodable frames")
    return frames, decoded


def decode_and_sample(
    data: bytes,
    fps: float,
    max_frames: int,
    limits: VideoLimits,
    size: FrameSize | None = None,
    max_tokens: int | None = None,
) -> SampledVideo:
    """Decode an encoded video and keep `sample_count` evenly spaced frames of it, resized to `size` if
    given. With `size`, a video whose patches need over `max_tokens` LLM tokens is refused before any frame
    is decoded when the header gives the frame size, else at the first frame."""
    if not data:
        raise InputError("video is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise InputError(f"video is {len(data)} bytes, over the limit of {limits.max_bytes} bytes")
    header = read_header(data, limits)
    total = header.total_frames
    for _attempt in range(2):
        indices = sample_indices(total, sample_count(total, header.fps, fps, max_frames))
        if size and header.width and header.height:
            check_tokens(len(indices), *size(len(indices), header.height, header.width), max_tokens)
        frames, decoded = _decode_selected(data, indices, header.fps, limits, size, max_tokens)
        if decoded == total:
            return SampledVideo(
                frames=frames, frame_indices=indices, source_fps=header.fps, total_frames=total
            )
        # The packet count was off (a codec with frames spread over packets): sample again on the true count.
        total = decoded
        if total < 1:
            raise InputError("video has no frames")
    raise InputError("video frame count is unstable between decodes")


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
    data: bytes,
    fps: float,
    max_frames: int,
    min_pixels: int,
    max_pixels: int,
    limits: VideoLimits,
    max_tokens: int | None = None,
) -> PreparedVideo:
    def size(frame_count: int, height: int, width: int) -> tuple[int, int]:
        cap = frame_max_pixels(frame_count, min_pixels, max_pixels, FILE_TOTAL_PIXELS)
        return smart_resize(height, width, FACTOR, min_pixels, cap)

    sampled = decode_and_sample(data, fps, max_frames, limits, size=size, max_tokens=max_tokens)
    frames = sampled.frames
    if len(frames) % TEMPORAL_PATCH_SIZE:  # cannot happen after sample_count, kept for frame lists
        frames = np.concatenate([frames, frames[-1:]], axis=0)
    return PreparedVideo(
        patches=patchify(frames), timestamps=group_timestamps(sampled.frame_indices, sampled.source_fps)
    )
