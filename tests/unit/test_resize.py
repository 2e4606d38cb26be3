"""The numpy antialiased bicubic resize against torch's, which qwen-vl-utils uses for video frames."""

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.media import resize
from backend.media.image import smart_resize

# Torch's CPU kernels are compiled per capability; only the AVX2 / AVX512 builds fuse multiply-adds the way
# backend.media.resize reproduces (see its docstring). Any x86 server since 2013 runs one of them.
FUSED_BUILD = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def torch_float(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    tensor = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    resized = torch.nn.functional.interpolate(
        tensor, size=(height, width), mode="bicubic", align_corners=False, antialias=True
    )
    return resized.permute(0, 2, 3, 1).numpy()


def torch_uint8(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.rint(np.clip(torch_float(frames, height, width), 0, 255)).astype(np.uint8)


def torch_axis_weights(in_size: int, out_size: int) -> np.ndarray:
    """Torch's [out, in] weights for the width axis: resizing the identity matrix along its width only runs
    that pass, and multiplying by 1 or 0 and adding 0 are exact."""
    identity = torch.eye(in_size).reshape(1, 1, in_size, in_size)
    out = torch.nn.functional.interpolate(
        identity, size=(in_size, out_size), mode="bicubic", align_corners=False, antialias=True
    )
    return out[0, 0].numpy().T


def dense(taps: resize.AxisTaps, in_size: int) -> np.ndarray:
    matrix = np.zeros((len(taps.first), in_size), np.float32)
    for tap in range(taps.weights.shape[1]):
        inside = taps.first + tap < in_size
        matrix[np.nonzero(inside)[0], (taps.first + tap)[inside]] = taps.weights[inside, tap]
    return matrix


def test_the_machine_runs_a_torch_build_with_fused_multiply_adds():
    assert FUSED_BUILD, torch.backends.cpu.get_cpu_capability()


SIZE_PAIRS = [
    (1280, 1024),
    (720, 576),
    (1920, 1184),
    (37, 100),
    (100, 37),
    (7, 3),
    (3, 7),
    (403, 3),
    (1000, 999),
]


@pytest.mark.parametrize(("in_size", "out_size"), SIZE_PAIRS)
def test_axis_weights_are_torchs_bit_for_bit(in_size, out_size):
    expected = torch_axis_weights(in_size, out_size)
    actual = dense(resize.axis_taps(in_size, out_size), in_size)
    np.testing.assert_array_equal(actual, expected)


def test_an_unchanged_axis_is_not_resampled():
    taps = resize.axis_taps(50, 50)
    assert not taps.resampled
    np.testing.assert_array_equal(dense(taps, 50), np.eye(50, dtype=np.float32))


def exactly_rounded_fma(a: np.float32, b: np.float32, c: np.float32) -> np.float32:
    """a * b + c rounded once to float32, half to even, by exact rational arithmetic."""
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    guess = np.float32(float(exact))
    candidates = [np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf))]
    return min(
        candidates,
        key=lambda value: (abs(Fraction(float(value)) - exact), int(np.float32(value).view(np.uint32)) & 1),
    )


def test_fused_multiply_add_rounds_once():
    rng = np.random.default_rng(0)
    a = rng.uniform(-300, 300, 3000).astype(np.float32)
    b = rng.uniform(-1, 1, 3000).astype(np.float32)
    c = rng.uniform(-300, 300, 3000).astype(np.float32)
    # (1 + 2**-12)**2 = 1 + 2**-11 + 2**-24 lies halfway between two float32; a c far below float64's
    # precision decides the correct rounding, which rounding the float64 sum to float32 would miss.
    near_one, far_below = np.float32(1 + 2.0**-12), np.float32(2.0**-60)
    a[:3], b[:3], c[:3] = near_one, [near_one, near_one, -near_one], [far_below, -far_below, -far_below]
    actual = resize.fused_multiply_add(a, b, c)
    expected = np.array([exactly_rounded_fma(x, y, z) for x, y, z in zip(a, b, c)], np.float32)
    np.testing.assert_array_equal(actual, expected)
    plain = (a.astype(np.float64) * b + c).astype(np.float32)
    assert not np.array_equal(plain, expected)  # the float64 shortcut would not do


EXACT_CASES = [
    ((40, 60), (32, 32)),
    ((17, 23), (40, 9)),
    ((64, 48), (64, 30)),  # height unchanged: width pass only
    ((50, 50), (31, 50)),  # width unchanged: height pass only
    ((30, 200), (60, 25)),
    ((5, 7), (3, 11)),
    ((120, 90), (7, 11)),  # 17-tap and 27-tap sums, whose loop runs in unrolled groups
]


@pytest.mark.parametrize(("source", "target"), EXACT_CASES)
def test_exact_values_are_torchs_float32_bit_for_bit(source, target):
    rng = np.random.default_rng(sum(source + target))
    frame = rng.integers(0, 256, (*source, 3), dtype=np.uint8)
    height, width = target
    rows, cols, channels = (grid.ravel() for grid in np.indices((height, width, 3)))
    plan = resize.ResizePlan.build(*source, height, width)
    actual = resize.exact_values(frame, rows, cols, channels, plan.width, plan.height).reshape(
        height, width, 3
    )
    expected = torch_float(frame[None], height, width)[0]
    np.testing.assert_array_equal(actual.view(np.uint32), expected.view(np.uint32))


def test_the_fast_path_stays_within_its_rounding_tolerance():
    rng = np.random.default_rng(4)
    frame = rng.integers(0, 256, (180, 320, 3), dtype=np.uint8)
    frame[:90] = np.where(rng.random((90, 320, 1)) < 0.5, 0, 255)  # hard edges, extreme values
    plan = resize.ResizePlan.build(180, 320, 224, 96)
    fast = resize.fast_values(frame, plan).transpose(1, 2, 0)
    error = np.abs(fast.astype(np.float64) - torch_float(frame[None], 224, 96)[0]).max()
    assert 0 < error < 0.5 - plan.near_midpoint


def test_pixels_next_to_a_midpoint_are_recomputed():
    """A frame whose resize lands many values on x.5 +- a few ulp, where the fast path alone rounds wrong."""
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, (2, 240, 320, 3), dtype=np.uint8)
    height, width = smart_resize(240, 320, 32, 128 * 1024, 768 * 1024)
    plan = resize.ResizePlan.build(240, 320, height, width)
    fast = resize.fast_values(frames[0], plan)
    fast_only = np.rint(np.clip(fast, 0, 255)).astype(np.uint8).transpose(1, 2, 0)
    expected = torch_uint8(frames, height, width)
    assert (fast_only != expected[0]).any()
    np.testing.assert_array_equal(resize.resize_bicubic_antialias(frames, height, width), expected)


def random_frames(rng: np.random.Generator, count: int, height: int, width: int, kind: int) -> np.ndarray:
    if kind == 0:  # noise
        return rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)
    if kind == 1:  # smooth gradients with noise
        rows, cols = np.mgrid[0:height, 0:width]
        base = np.sin(rows / 7.0)[..., None] * 60 + np.cos(cols / 11.0)[..., None] * 60 + 128
        return np.clip(base + rng.normal(0, 20, (count, height, width, 3)), 0, 255).astype(np.uint8)
    cells = rng.integers(0, 2, (count, height // 8 + 1, width // 8 + 1, 3)).astype(np.uint8) * 255
    return np.ascontiguousarray(cells.repeat(8, 1).repeat(8, 2)[:, :height, :width])  # hard 0/255 edges


def random_cases(count: int) -> list[tuple[int, int, int, int, int, int]]:
    rng = np.random.default_rng(6)
    return [
        tuple(int(v) for v in (rng.integers(1, 9), *rng.integers(1, 260, 4), index % 3))
        for index in range(count)
    ]


EDGE_CASES = [
    (3, 1, 1, 5, 7, 0),
    (2, 5, 7, 1, 1, 0),
    (1, 64, 64, 64, 64, 0),
    (2, 100, 3, 7, 300, 1),
    (1, 9, 2000, 9, 31, 2),
]


@pytest.mark.parametrize(
    ("count", "in_height", "in_width", "height", "width", "kind"), random_cases(30) + EDGE_CASES
)
def test_uint8_frames_equal_torchs(count, in_height, in_width, height, width, kind):
    frames = random_frames(np.random.default_rng(count * in_width), count, in_height, in_width, kind)
    actual = resize.resize_bicubic_antialias(frames, height, width)
    assert actual.shape == (count, height, width, 3) and actual.dtype == np.uint8
    np.testing.assert_array_equal(actual, torch_uint8(frames, height, width))


@pytest.mark.parametrize(("in_height", "in_width"), [(240, 320), (480, 640), (720, 1280), (1080, 1920)])
@pytest.mark.parametrize("max_pixels", [128 * 1024, 768 * 1024])
def test_video_sizes_equal_torch_at_their_smart_resized_size(in_height, in_width, max_pixels):
    frames = random_frames(np.random.default_rng(in_width), 2, in_height, in_width, kind=1)
    height, width = smart_resize(in_height, in_width, 32, 128 * 1024, max_pixels)
    np.testing.assert_array_equal(
        resize.resize_bicubic_antialias(frames, height, width), torch_uint8(frames, height, width)
    )


def test_other_inputs_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        resize.resize_bicubic_antialias(np.zeros((1, 4, 4, 3), np.float32), 2, 2)
    with pytest.raises(ValueError, match="empty"):
        resize.resize_bicubic_antialias(np.zeros((1, 4, 4, 3), np.uint8), 0, 2)


def test_the_video_preprocess_imports_no_torch():
    code = "import sys, backend.media.video, backend.media.resize; print('torch' in sys.modules)"
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo
    )
    assert result.stdout.strip() == "False"
