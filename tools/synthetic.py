"""Deterministic synthetic media (photo-like images, UI screenshots, encoded videos) for tests,
perf workloads and smoke checks. Nothing here is used to serve requests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise and a few shapes: compresses like a photo, not like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            128 + 100 * np.sin(x / (17 + seed % 7) + rng.uniform(0, 6)),
            128 + 100 * np.cos(y / (23 + seed % 5) + rng.uniform(0, 6)),
            128 + 100 * np.sin((x + y) / 31 + rng.uniform(0, 6)),
        ],
        axis=-1,
    )
    base += rng.normal(0, 12, size=base.shape)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(8, max(9, width // 3))), y0 + int(rng.integers(8, max(9, height // 3)))
        draw.ellipse((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return image


def screenshot(width: int = 1280, height: int = 720, seed: int = 0) -> Image.Image:
    """A flat UI page: title bar, sidebar, lines of text, buttons."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), (246, 247, 249))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, width, 48), fill=(32, 56, 100))
    draw.text((16, 16), f"Quarterly report {seed} - Dashboard", fill=(255, 255, 255))
    draw.rectangle((0, 48, 220, height), fill=(228, 231, 236))
    for row in range(12):
        draw.text((20, 70 + row * 28), f"Section {row + 1}", fill=(40, 40, 40))
    for line in range(18):
        words = " ".join(f"word{int(v)}" for v in rng.integers(0, 999, size=8))
        draw.text((250, 70 + line * 26), words, fill=(20, 20, 20))
    for button in range(3):
        x0 = 250 + button * 160
        draw.rounded_rectangle((x0, height - 70, x0 + 140, height - 30), radius=8, fill=(52, 120, 246))
        draw.text((x0 + 30, height - 58), f"Action {button + 1}", fill=(255, 255, 255))
    return image


def encode_image(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def video_frames(frame_count: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """uint8 [T, H, W, 3]: a moving disc over a drifting gradient, so frames differ and encode well."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 6)
    frames = np.empty((frame_count, height, width, 3), dtype=np.uint8)
    for index in range(frame_count):
        t = index / max(1, frame_count - 1)
        red = 128 + 100 * np.sin(x / 19 + phase + 6 * t)
        green = 128 + 100 * np.cos(y / 13 - 4 * t)
        blue = np.full_like(x, 60 + 150 * t)
        cx, cy = width * (0.2 + 0.6 * t), height / 2
        disc = (x - cx) ** 2 + (y - cy) ** 2 < (min(width, height) / 6) ** 2
        frame = np.stack([red, green, blue], axis=-1)
        frame[disc] = (250, 250, 30)
        frames[index] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


CONTAINERS = {
    "mp4": ("mp4", "libx264", "yuv420p"),
    "webm": ("webm", "libvpx-vp9", "yuv420p"),
    "gif": ("gif", "gif", "rgb8"),
}


def encode_video(frames: np.ndarray, fps: int = 24, kind: str = "mp4") -> bytes:
    """Encode frames with PyAV: mp4 (H.264), webm (VP9) or animated gif."""
    import av

    container_format, codec, pixel_format = CONTAINERS[kind]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        assert isinstance(stream, av.VideoStream), codec  # CONTAINERS names video codecs only
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pixel_format
        if kind == "mp4":
            stream.options = {"preset": "ultrafast", "tune": "zerolatency"}
        elif kind == "webm":
            stream.options = {"deadline": "realtime", "cpu-used": "8"}
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def video(
    seconds: float = 2.0, fps: int = 24, width: int = 320, height: int = 240, kind: str = "mp4", seed: int = 0
) -> bytes:
    return encode_video(video_frames(int(round(seconds * fps)), width, height, seed), fps=fps, kind=kind)
