import io

import numpy as np
import pytest
from PIL import Image

from backend.errors import InputError
from backend.media import image as vision


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def photo(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode)


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (448, 448, (448, 448)),
        (720, 1280, (704, 1280)),  # rounded to multiples of 32
        (10, 10, (64, 64)),  # scaled up to min_pixels
        (8000, 6000, (1536, 1152)),  # scaled down under max_pixels, aspect kept
    ],
)
def test_smart_resize(height, width, expected):
    resized = vision.smart_resize(height, width, 32, 4 * 32 * 32, 1800 * 32 * 32)
    assert resized == expected
    assert resized[0] * resized[1] <= 1800 * 32 * 32


def test_extreme_aspect_ratio_is_an_input_error():
    with pytest.raises(InputError, match="aspect ratio"):
        vision.smart_resize(10, 3000, 32, 4096, 1843200)


@pytest.mark.parametrize(("size", "mode"), [((448, 448), "RGB"), ((1280, 720), "RGBA"), ((300, 517), "L")])
def test_patches_equal_qwen2vl_image_processor_after_smart_resize(size, mode):
    from transformers import Qwen2VLImageProcessor

    image = photo(*size, mode=mode)
    data = encode(image)
    ours = vision.image_patches(data, 4096, 1843200, 1 << 30, 1 << 30)

    # The official path: qwen-vl-utils' to_rgb + smart_resize + PIL resize, then the processor without resize.
    rgb = vision.to_rgb(Image.open(io.BytesIO(data)))
    h, w = vision.smart_resize(rgb.height, rgb.width, 32, 4096, 1843200)
    processor = Qwen2VLImageProcessor(
        patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    reference = processor(images=[rgb.resize((w, h))], do_resize=False, return_tensors="np")

    assert ours.grid_thw == tuple(reference["image_grid_thw"][0])
    import torch

    from backend.runtime.backbone import normalize_pixels

    normalized = normalize_pixels(torch.from_numpy(ours.patches)).numpy()
    np.testing.assert_allclose(normalized, reference["pixel_values"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
def test_cpu_pixel_values_are_normalize_pixels_bit_for_bit(dtype_name):
    """The model step's CPU lookup table gives exactly what the arithmetic gives, for every uint8 value."""
    import torch

    from backend.runtime.backbone import normalize_pixels, pixel_values

    dtype = getattr(torch, dtype_name)
    rng = np.random.default_rng(3)
    patches = np.concatenate(
        [np.arange(256, dtype=np.uint8).repeat(6).reshape(1, -1), rng.integers(0, 256, (40, 1536), np.uint8)]
    )
    expected = normalize_pixels(torch.from_numpy(patches)).to(dtype)
    got = pixel_values(patches, torch.device("cpu"), dtype)
    assert got.dtype == dtype and got.shape == expected.shape
    assert torch.equal(got, expected)


def test_rgba_is_composited_on_white():
    transparent = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    assert vision.to_rgb(transparent).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"not an image at all", "not a decodable image"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "not a decodable image"),
    ],
)
def test_bad_bytes_are_input_errors(data, message):
    with pytest.raises(InputError, match=message):
        vision.image_patches(data, 4096, 1843200, 1 << 30, 1 << 30)


def test_truncated_jpeg_is_an_input_error():
    data = encode(photo(256, 256), "JPEG")
    with pytest.raises(InputError):
        vision.image_patches(data[: len(data) // 2], 4096, 1843200, 1 << 30, 1 << 30)


def test_limits_are_checked_before_decoding():
    data = encode(photo(400, 300))
    with pytest.raises(InputError, match="bytes, over the limit"):
        vision.image_patches(data, 4096, 1843200, max_bytes=100, max_decoded_pixels=1 << 30)
    with pytest.raises(InputError, match="pixels, over the limit"):
        vision.image_patches(data, 4096, 1843200, max_bytes=1 << 30, max_decoded_pixels=1000)
