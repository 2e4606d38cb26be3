"""Input items: what callers pass, checked early and read lazily, then cut into requests."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from qwen3vl_client.errors import ItemError

if TYPE_CHECKING:
    from PIL import Image

# An image is a file path, the bytes of an encoded file, or a PIL image (sent as PNG).
ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, "Image.Image"]
# A video is a file path or the bytes of an encoded file (MP4, WebM, animated GIF, ...).
VideoInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]

_BLOB_TYPES = (bytes, bytearray, memoryview)
_PATH_TYPES = (str, os.PathLike)
# PNG holds these modes as they are; anything else (CMYK, YCbCr, F, ...) is converted to RGB first.
_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}
_DESCRIBE_TEXT_CHARS = 40


def _is_pil_image(value: object) -> bool:
    # Checked by duck type so that PIL is imported only by callers who pass PIL images.
    return hasattr(value, "save") and hasattr(value, "mode") and hasattr(value, "size")


def _media_tuple(value: Any, name: str, allow_pil: bool) -> tuple[Any, ...]:
    """One medium or a sequence of them, as a tuple; wrong types raise here, not mid-run."""
    if value is None:
        return ()
    single = isinstance(value, _PATH_TYPES + _BLOB_TYPES) or (allow_pil and _is_pil_image(value))
    values = (value,) if single else tuple(value)
    for element in values:
        ok = isinstance(element, _PATH_TYPES + _BLOB_TYPES) or (allow_pil and _is_pil_image(element))
        if not ok:
            kinds = "a path, bytes or a PIL image" if allow_pil else "a path or bytes"
            raise TypeError(f"each of {name} must be {kinds}, got {type(element).__name__}")
    return values


@dataclass(frozen=True)
class Item:
    """One thing to embed or rerank: any mix of text, images and videos (the model reads videos,
    images, text).

    ``instruction`` and ``dimensions`` override the call's values for this item only, so queries
    (with a task instruction) and documents (default instruction) can share a call. Reranking uses
    neither (its instruction is per call) and refuses items that set them.
    """

    text: str | None = None
    images: Sequence[ImageInput] = ()
    videos: Sequence[VideoInput] = ()
    instruction: str | None = None
    dimensions: int | None = None

    def __post_init__(self) -> None:
        if self.text is not None and not isinstance(self.text, str):
            raise TypeError(f"text must be a str, got {type(self.text).__name__}")
        # A single path or blob is one image, not a sequence of characters or bytes.
        object.__setattr__(self, "images", _media_tuple(self.images, "images", allow_pil=True))
        object.__setattr__(self, "videos", _media_tuple(self.videos, "videos", allow_pil=False))
        if self.instruction is not None and not isinstance(self.instruction, str):
            raise TypeError(f"instruction must be a str, got {type(self.instruction).__name__}")
        check_dimensions(self.dimensions)

    def describe(self) -> str:
        """A short human summary for error messages: text start, image and video names."""
        parts = []
        if self.text is not None:
            text = self.text
            if len(text) > _DESCRIBE_TEXT_CHARS:
                text = text[:_DESCRIBE_TEXT_CHARS] + "…"
            parts.append(f"text {text!r}")
        for kind, media in (("image", self.images), ("video", self.videos)):
            if media:
                names = ", ".join(_describe_medium(medium) for medium in media)
                parts.append(f"{kind}{'s' if len(media) > 1 else ''} {names}")
        return "; ".join(parts) or "empty item"


def _describe_medium(medium: Any) -> str:
    if isinstance(medium, _PATH_TYPES):
        return repr(os.fspath(medium))
    if isinstance(medium, _BLOB_TYPES):
        return f"<{len(medium)} bytes>"
    return f"<PIL image {medium.size[0]}x{medium.size[1]}>"


def check_dimensions(dimensions: int | None) -> None:
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)):
        raise TypeError(f"dimensions must be an int, got {type(dimensions).__name__}")
    if dimensions is not None and dimensions < 0:
        raise ValueError(f"dimensions must be 0 (full) or positive, got {dimensions}")


def collect_items(
    items: Iterable[Item | str] | Item | str | None = None,
    texts: str | Iterable[str] | None = None,
    images: ImageInput | Iterable[ImageInput] | None = None,
    videos: VideoInput | Iterable[VideoInput] | None = None,
) -> list[Item]:
    """The call's items in output order: ``items``, then one per text, one per image, one per video."""
    collected: list[Item] = []
    if isinstance(items, (str, Item)):
        items = [items]
    for element in items or ():
        if isinstance(element, Item):
            collected.append(element)
        elif isinstance(element, str):
            collected.append(Item(text=element))
        else:
            raise TypeError(f"items must be Item or str, got {type(element).__name__}")
    if texts is not None:
        collected.extend(Item(text=text) for text in ([texts] if isinstance(texts, str) else texts))
    collected.extend(Item(images=(image,)) for image in _media_tuple(images, "images", allow_pil=True))
    collected.extend(Item(videos=(video,)) for video in _media_tuple(videos, "videos", allow_pil=False))
    return collected


@dataclass(frozen=True)
class Row:
    """One item as it goes on the wire: encoded files, resolved instruction and dimensions. ``raw`` and
    ``token_ids`` are the gateway's (vLLM's raw completion path: no chat template; token ids instead of
    text); the client never sets them."""

    text: bytes
    images: tuple[bytes, ...]
    videos: tuple[bytes, ...]
    instruction: bytes
    dimensions: int
    raw: bool = False
    token_ids: tuple[int, ...] | None = None

    @property
    def media_bytes(self) -> int:
        return sum(map(len, self.images)) + sum(map(len, self.videos))

    @property
    def nbytes(self) -> int:
        return len(self.text) + self.media_bytes


@dataclass
class Batch:
    """Consecutive-or-not input items sent as one request; ``indices`` are their input positions."""

    indices: list[int] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.indices)

    def add(self, index: int, item: Item, row: Row) -> None:
        self.indices.append(index)
        self.items.append(item)
        self.rows.append(row)

    def singles(self) -> list[Batch]:
        return [
            Batch([index], [item], [row]) for index, item, row in zip(self.indices, self.items, self.rows)
        ]


def image_bytes(image: ImageInput) -> bytes:
    if isinstance(image, _BLOB_TYPES):
        return bytes(image)
    if isinstance(image, _PATH_TYPES):
        return Path(image).read_bytes()
    if image.mode not in _PNG_MODES:
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def video_bytes(video: VideoInput) -> bytes:
    if isinstance(video, _BLOB_TYPES):
        return bytes(video)
    return Path(video).read_bytes()


def encode_row(item: Item, instruction: str | None, dimensions: int | None) -> Row:
    """Read the item's files; the item's own instruction and dimensions win over the call's."""
    chosen_instruction = item.instruction if item.instruction is not None else instruction
    chosen_dimensions = item.dimensions if item.dimensions is not None else dimensions
    return Row(
        text=(item.text or "").encode("utf-8"),
        images=tuple(image_bytes(image) for image in item.images),
        videos=tuple(video_bytes(video) for video in item.videos),
        instruction=(chosen_instruction or "").encode("utf-8"),
        dimensions=chosen_dimensions or 0,
    )


def plan_batches(
    items: Sequence[Item],
    instruction: str | None,
    dimensions: int | None,
    batch_size: int,
    max_request_bytes: int,
    row_overhead: int = 0,
) -> Iterator[Batch | ItemError]:
    """Requests of at most ``batch_size`` items and (unless one item is larger) ``max_request_bytes``;
    ``row_overhead`` bytes go with every row besides its item (the rerank query).

    Files are read only when their batch is due, so a folder of thousands of videos is never held in
    memory at once. An item whose file cannot be read is yielded as an ``ItemError`` in its place.
    """
    batch = Batch()
    size = 0
    for index, item in enumerate(items):
        try:
            row = encode_row(item, instruction, dimensions)
        except OSError as error:
            yield ItemError(index, item.describe(), f"cannot read file: {error}")
            continue
        nbytes = row.nbytes + row_overhead
        if batch and (len(batch) >= batch_size or size + nbytes > max_request_bytes):
            yield batch
            batch, size = Batch(), 0
        batch.add(index, item, row)
        size += nbytes
    if batch:
        yield batch
