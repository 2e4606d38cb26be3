"""What a result card shows of its row: a JPEG thumbnail (an image, one frame of a video) or a text snippet.

Images are read with Pillow and video frames decoded with PyAV, the libraries the server's media steps use.
"""

from __future__ import annotations

import io
from pathlib import Path

from qwen3vl_client.bulk.sources import Record
from qwen3vl_client.items import Item

THUMBNAIL_PIXELS = 320  # the longer side of a thumbnail
SNIPPET_CHARS = 280
JPEG_QUALITY = 80


def _jpeg(image: object) -> bytes:
    from PIL import Image

    assert isinstance(image, Image.Image)
    image = image.convert("RGB")
    image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def _opened(medium: Path | bytes) -> Path | io.BytesIO:
    """What Pillow and PyAV open: a path, or a table cell's bytes as a file."""
    return io.BytesIO(medium) if isinstance(medium, bytes) else medium


def image_thumbnail(medium: Path | bytes) -> bytes:
    from PIL import Image

    with Image.open(_opened(medium)) as image:
        image.seek(0)  # the first frame of an animated GIF or a multi-page TIFF
        return _jpeg(image)


def video_frame(medium: Path | bytes) -> bytes:
    """The frame a third of the way in (a clip's first frame is often black), else the first one."""
    import av

    opened = _opened(medium)
    with av.open(str(opened) if isinstance(opened, Path) else opened, mode="r") as container:
        stream = container.streams.video[0]
        if stream.duration and stream.time_base:
            try:
                container.seek(int(stream.duration / 3), stream=stream)
            except av.error.FFmpegError:
                container.seek(0, stream=stream)
        for frame in container.decode(stream):
            return _jpeg(frame.to_image())
    raise ValueError(f"{medium if isinstance(medium, Path) else 'video bytes'}: no video frame")


def thumbnail(record: Record) -> bytes | None:
    """A JPEG of the record's first image, else of its first video; None for a text."""
    if record.images:
        return image_thumbnail(record.images[0])
    if record.videos:
        return video_frame(record.videos[0])
    return None


def snippet(record: Record) -> str | None:
    """The start of the record's text on one line, or None when it has none."""
    text = record.text
    if record.text_file is not None:
        with record.text_file.open(encoding="utf-8", errors="replace") as handle:
            text = handle.read(SNIPPET_CHARS * 4)
    if text is None:
        return None
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1] + "…"


def load_document(record: Record) -> Item:
    """The record as the reranker's document: its text and its files' bytes, without the instruction
    (the reranker takes one per call and refuses items that carry their own)."""
    loaded = record.load()
    return Item(text=loaded.text, images=loaded.images, videos=loaded.videos)
