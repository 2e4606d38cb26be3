"""Image decoding, smart resize and patchification, matching qwen-vl-utils 0.0.14 + Qwen2VLImageProcessor.

Pixels stay uint8 all the way to the model step: the processor's rescale/normalise ((x/255 - 0.5) / 0.5) is
done there, on the device, so the preprocess -> model hop carries 4x fewer bytes.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable

import numpy as np
from PIL import Image

from backend.errors import InputError
from backend.protocol import MERGE_SIZE, PATCH_SIZE, TEMPORAL_PATCH_SIZE, VisionPatches

FACTOR = PATCH_SIZE * MERGE_SIZE  # one LLM token per 32x32 pixels
MAX_ASPECT_RATIO = 200


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Height and width rounded to multiples of `factor`, pixel count within [min, max], aspect kept."""
    if min(height, width) <= 0:
        raise InputError(f"image has an empty side ({width}x{height})")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise InputError(
            f"aspect ratio {max(height, width) / min(height, width):.0f}:1 is over the limit "
            f"of {MAX_ASPECT_RATIO}:1"
        )
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def to_rgb(image: Image.Image) -> Image.Image:
    """RGBA is composited onto white (as qwen-vl-utils does); every other mode is converted to RGB."""
    if image.mode == "RGB":  # convert() would copy it, doubling the peak memory of a large image
        return image
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.split()[3])
        return background
    return image.convert("RGB")


def open_image(
    data: bytes, max_bytes: int, max_pixels: int, check_size: Callable[[int, int], None] | None = None
) -> Image.Image:
    """Decode an encoded image, checking size limits (and `check_size(width, height)`) from the header
    before the pixels are decoded."""
    if not data:
        raise InputError("image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise InputError(f"image is {len(data)} bytes, over the limit of {max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise InputError(f"image is {width}x{height} pixels, over the limit of {max_pixels} pixels")
            if check_size is not None:
                check_size(width, height)
            image.load()
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InputError(f"image rejected as a decompression bomb: {error}") from None
    except Image.UnidentifiedImageError:
        raise InputError("bytes are not a decodable image (unknown or unsupported format)") from None
    except Exception as error:  # PIL raises many types for corrupt data; all mean the same to a caller
        raise InputError(f"bytes are not a decodable image ({type(error).__name__}: {error})") from None
    return image


def resize_image(image: Image.Image, min_pixels: int, max_pixels: int) -> np.ndarray:
    """RGB uint8 [H, W, 3] at the smart-resized size (PIL bicubic, as qwen-vl-utils' fetch_image)."""
    rgb = to_rgb(image)
    width, height = rgb.size
    resized_height, resized_width = smart_resize(height, width, FACTOR, min_pixels, max_pixels)
    resized = rgb.resize((resized_width, resized_height), resample=Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.uint8)


def patchify(frames: np.ndarray) -> VisionPatches:
    """uint8 frames [T, H, W, 3] (T even, H and W multiples of 32) -> patches in the processor's order.

    Row order: temporal group, merge-block row, merge-block column, row in block, column in block;
    each row holds channel, temporal, patch row, patch column (the Qwen2-VL / Qwen3-VL layout).
    """
    frame_count, height, width, channels = frames.shape
    if frame_count % TEMPORAL_PATCH_SIZE:
        raise ValueError(f"frame count {frame_count} is not a multiple of {TEMPORAL_PATCH_SIZE}")
    grid_t = frame_count // TEMPORAL_PATCH_SIZE
    grid_h, grid_w = height // PATCH_SIZE, width // PATCH_SIZE
    blocks = frames.reshape(
        grid_t,
        TEMPORAL_PATCH_SIZE,
        grid_h // MERGE_SIZE,
        MERGE_SIZE,
        PATCH_SIZE,
        grid_w // MERGE_SIZE,
        MERGE_SIZE,
        PATCH_SIZE,
        channels,
    )
    # axes: 0 t, 1 tp, 2 bh, 3 mh, 4 ph, 5 bw, 6 mw, 7 pw, 8 c
    ordered = blocks.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)
    patches = np.ascontiguousarray(ordered).reshape(
        grid_t * grid_h * grid_w, channels * TEMPORAL_PATCH_SIZE * PATCH_SIZE * PATCH_SIZE
    )
    return VisionPatches(patches=patches, grid_thw=(grid_t, grid_h, grid_w))


def image_patches(
    data: bytes,
    min_pixels: int,
    max_pixels: int,
    max_bytes: int,
    max_decoded_pixels: int,
    max_tokens: int | None = None,
) -> VisionPatches:
    """Encoded image -> patches; a still image is repeated to fill the temporal patch, like the processor.
    An image whose patches need over `max_tokens` LLM tokens is refused from its header, before decoding."""

    def check_size(width: int, height: int) -> None:
        resized_height, resized_width = smart_resize(height, width, FACTOR, min_pixels, max_pixels)
        tokens = (resized_height // FACTOR) * (resized_width // FACTOR)
        if max_tokens is not None and tokens > max_tokens:
            raise InputError(
                f"image needs {tokens} tokens ({resized_width}x{resized_height} after resizing), over the "
                f"{max_tokens} its item has left of max_length; send a smaller image"
            )

    image = open_image(data, max_bytes, max_decoded_pixels, check_size)
    pixels = resize_image(image, min_pixels, max_pixels)
    return patchify(np.repeat(pixels[None], TEMPORAL_PATCH_SIZE, axis=0))
