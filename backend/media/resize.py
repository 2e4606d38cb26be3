"""Antialiased bicubic resize of uint8 frames in numpy, equal to torch's CPU result.

qwen-vl-utils resizes video frames with torchvision's tensor resize: `F.interpolate(frames.float(),
mode="bicubic", align_corners=False, antialias=True)`, then clamp to [0, 255], round half to even, uint8.
Torch computes that as two separable passes, width first, then height (a pass is skipped when that size
does not change). For each output pixel i of an axis with scale = in / out (float32):

- the taps are the input pixels [xmin, xmin + xsize) around center = scale * (i + 0.5), within
  support = 2 * scale when downscaling (2 when upscaling), all of them at most `taps` = 2 * ceil(support) + 1;
- each weight is Keys' cubic (a = -0.5) of the distance to the center, divided by scale when downscaling;
  the weights of one pixel are then divided by their float32 sum;
- a pass sums `value * weight` over the taps in order into a float32 (see `_weighted_sum` for which
  products are rounded and which are fused multiply-adds).

Torch's CPU kernel is compiled with FMA contraction in its AVX2 and AVX512 builds (ATEN_CPU_CAPABILITY): the
weights and sums below reproduce those float32 operations bit for bit, each fused multiply-add emulated in
float64 rounded to odd. (The DEFAULT build, for CPUs without AVX2, rounds every product: its float32 values
differ in the last bit, so a few pixels in 10^4 round the other way; that build is not reproduced.)

That exact emulation is too slow for whole videos in numpy, so frames go through a fast path first:
per-axis banded float32 matrix products with the same weights. Its result differs from torch's by at most a
few float32 rounding errors (`_rounding_tolerance` bounds both), which only matters where a value lies that
close to a rounding midpoint (x.5); those pixels, about 0.5% of them, are recomputed with the exact emulation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KEYS_A = np.float32(-0.5)  # torch's (and PIL's) cubic coefficient for antialiased bicubic
TAP_RADIUS = 2.0  # the cubic kernel is non-zero on (-2, 2)
# Output pixels per block of the banded matrix product: small enough that a block's input window stays
# close to its taps, large enough that numpy's per-call overhead is paid rarely (32 measured best of 16..128).
BLOCK = 32
FLOAT32_UNIT_ROUNDOFF = 2.0**-24
# torch's compiled tap loop runs in groups of 4 (see _weighted_sum), found by matching its output bit for bit.
UNROLL = 4


@dataclass(frozen=True)
class AxisTaps:
    """How one axis is resampled: output pixel i sums input[first[i] + j] * weights[i, j] over j."""

    first: np.ndarray  # int64 [out]
    counts: np.ndarray  # int64 [out], each pixel's own tap count
    weights: np.ndarray  # float32 [out, taps]; zero past a pixel's own tap count
    resampled: bool  # False when the size does not change: torch then skips the pass


def fused_multiply_add(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 a * b + c rounded once, as the CPU's FMA instruction does.

    The product of two float32 is exact in float64. The float64 sum is rounded to odd (its last bit set when
    inexact, after truncating towards zero), which makes the final rounding to float32 a correct one instead
    of a double rounding."""
    product = a.astype(np.float64) * b.astype(np.float64)
    addend = c.astype(np.float64)
    total = product + addend
    # Knuth's two-sum: the exact error of the float64 addition.
    addend_part = total - product
    error = (product - (total - addend_part)) + (addend - addend_part)
    inexact = error != 0
    overshoot = inexact & (np.signbit(error) != np.signbit(total))
    bits = total.view(np.uint64) - overshoot.astype(np.uint64)
    bits |= inexact.astype(np.uint64)
    return bits.view(np.float64).astype(np.float32)


def cubic_weight(distance: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel in float32, in Horner form with fused multiply-adds like torch's."""
    x = np.abs(distance.astype(np.float32))
    a = KEYS_A
    one = np.float32(1)
    # |x| < 1: ((a + 2) x - (a + 3)) x x + 1
    inner = fused_multiply_add(np.full_like(x, a + 2), x, np.full_like(x, -(a + 3)))
    near = fused_multiply_add(inner * x, x, np.full_like(x, one))
    # 1 <= |x| < 2: ((a x - 5 a) x + 8 a) x - 4 a
    outer = fused_multiply_add(np.full_like(x, a), x, np.full_like(x, -np.float32(5) * a))
    outer = fused_multiply_add(outer, x, np.full_like(x, np.float32(8) * a))
    outer = fused_multiply_add(outer, x, np.full_like(x, -np.float32(4) * a))
    return np.where(x < 1, near, np.where(x < TAP_RADIUS, outer, np.float32(0))).astype(np.float32)


def axis_taps(in_size: int, out_size: int) -> AxisTaps:
    """Torch's antialiased bicubic taps and weights for one axis (align_corners=False, no scale factor)."""
    if in_size == out_size:
        ones = np.ones(out_size, np.int64)
        return AxisTaps(np.arange(out_size), ones, np.ones((out_size, 1), np.float32), resampled=False)
    scale = np.float32(in_size) / np.float32(out_size)
    downscaling = scale >= 1
    # Torch computes these in double from float32 operands and stores them as float32.
    support = np.float32(TAP_RADIUS * float(scale)) if downscaling else np.float32(TAP_RADIUS)
    invscale = np.float32(1.0 / float(scale)) if downscaling else np.float32(1)
    taps = int(np.ceil(support)) * 2 + 1
    center = (float(scale) * (np.arange(out_size) + 0.5)).astype(np.float32)
    # C++ casts to int64 truncate towards zero, as astype does.
    first = np.maximum(((center - support).astype(np.float64) + 0.5).astype(np.int64), 0)
    stop = np.minimum(((center + support).astype(np.float64) + 0.5).astype(np.int64), in_size)
    count = np.clip(stop - first, 0, taps)
    position = (first[:, None] + np.arange(taps)).astype(np.float32)
    distance = (((position - center[:, None]).astype(np.float64) + 0.5) * float(invscale)).astype(np.float32)
    weights = np.where(np.arange(taps) < count[:, None], cubic_weight(distance), np.float32(0))
    total = np.zeros(out_size, np.float32)
    for tap in range(taps):  # torch sums the weights in tap order, in float32
        total += weights[:, tap]
    weights = np.divide(weights, total[:, None], out=weights, where=total[:, None] != 0)
    return AxisTaps(first, count, weights.astype(np.float32), resampled=True)


@dataclass(frozen=True)
class _Block:
    outputs: slice
    inputs: slice
    matrix: np.ndarray  # float32 [outputs, inputs]


def _band_blocks(taps: AxisTaps, in_size: int) -> list[_Block]:
    """The [out, in] weight matrix of an axis cut into row blocks, each keeping only its input window."""
    out_size, tap_count = taps.weights.shape
    blocks = []
    for start in range(0, out_size, BLOCK):
        stop = min(start + BLOCK, out_size)
        low = int(taps.first[start:stop].min())
        high = min(int(taps.first[start:stop].max()) + tap_count, in_size)
        matrix = np.zeros((stop - start, high - low), np.float32)
        for tap in range(tap_count):
            column = taps.first[start:stop] + tap - low
            inside = column < high - low  # taps past the edge have zero weight
            matrix[np.arange(stop - start)[inside], column[inside]] = taps.weights[start:stop, tap][inside]
        blocks.append(_Block(slice(start, stop), slice(low, high), matrix))
    return blocks


def _rounding_tolerance(width: AxisTaps, height: AxisTaps) -> float:
    """A bound on |fast - torch| before rounding, with a 4x margin (measured errors stay 25x below it).

    Each of the two float32 computations (torch's tap loops and the matrix products) of a value from k = taps
    along x plus taps along y non-zero terms errs by at most k * u * sum |terms| (u = 2**-24, first order);
    the inputs are at most 255."""
    sum_x = float(np.abs(width.weights).sum(axis=1).max())
    sum_y = float(np.abs(height.weights).sum(axis=1).max())
    taps = width.weights.shape[1] + height.weights.shape[1]
    one_side = 255.0 * sum_x * sum_y * taps * FLOAT32_UNIT_ROUNDOFF
    return 4 * 2 * one_side


def _weighted_sum(values: np.ndarray, weights: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Torch's float32 sum over the last axis, in tap order, starting from the first product.

    The compiled loop over the further count - 1 taps runs in groups of UNROLL, whose products are rounded
    before they are added, and ends with the count - 1 mod UNROLL left over, each a fused multiply-add.
    Taps past a pixel's count have weight 0 and leave its sum unchanged either way."""
    plain_taps = (counts - 1) // UNROLL * UNROLL
    fewest, most = int(plain_taps.min()), int(plain_taps.max())
    total = values[..., 0] * weights[..., 0]
    for tap in range(1, values.shape[-1]):
        value, weight = values[..., tap], weights[..., tap]
        if tap <= fewest:
            total = total + value * weight
        elif tap > most:
            total = fused_multiply_add(value, weight, total)
        else:
            plain = total + value * weight
            total = np.where(tap <= plain_taps, plain, fused_multiply_add(value, weight, total))
    return total


def exact_values(
    frame: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    channels: np.ndarray,
    width: AxisTaps,
    height: AxisTaps,
) -> np.ndarray:
    """Torch's float32 output (before clamp and round) at the pixels (rows, cols, channels) of one frame."""
    in_height, in_width, depth = frame.shape
    y_taps = np.minimum(height.first[rows][:, None] + np.arange(height.weights.shape[1]), in_height - 1)
    x_taps = np.minimum(width.first[cols][:, None] + np.arange(width.weights.shape[1]), in_width - 1)
    # One flat gather: numpy's take on a 1-D array is many times faster than three broadcast index arrays.
    flat = (y_taps[:, :, None] * in_width + x_taps[:, None, :]) * depth + channels[:, None, None]
    values = np.ascontiguousarray(frame).reshape(-1).take(flat).astype(np.float32)
    across = _weighted_sum(values, width.weights[cols][:, None, :], width.counts[cols][:, None])  # width pass
    return _weighted_sum(across, height.weights[rows], height.counts[rows])


@dataclass(frozen=True)
class ResizePlan:
    """Everything about one (H, W) -> (height, width) resize that does not depend on the pixels."""

    width: AxisTaps
    height: AxisTaps
    width_blocks: list[_Block]
    height_blocks: list[_Block]
    near_midpoint: np.float32  # |value - round(value)| from which a pixel is recomputed exactly

    @classmethod
    def build(cls, in_height: int, in_width: int, height: int, width: int) -> ResizePlan:
        width_taps, height_taps = axis_taps(in_width, width), axis_taps(in_height, height)
        return cls(
            width_taps,
            height_taps,
            _band_blocks(width_taps, in_width),
            _band_blocks(height_taps, in_height),
            np.float32(0.5 - _rounding_tolerance(width_taps, height_taps)),
        )


def fast_values(frame: np.ndarray, plan: ResizePlan) -> np.ndarray:
    """One uint8 frame [H, W, C] -> float32 [C, height, width], within the rounding tolerance of torch.

    Planar ([C, H, W]) so that both passes are plain matrix products without transposing interleaved
    pixels; the height goes first, the pass BLAS does best (wide right-hand side), leaving fewer rows for
    the other."""
    channels = frame.shape[2]
    height, width = len(plan.height.first), len(plan.width.first)
    planes = np.ascontiguousarray(frame.transpose(2, 0, 1), dtype=np.float32)
    if plan.height.resampled:
        down = np.empty((channels, height, planes.shape[2]), np.float32)
        for block in plan.height_blocks:
            np.matmul(block.matrix, planes[:, block.inputs, :], out=down[:, block.outputs, :])
        planes = down
    if plan.width.resampled:
        rows = planes.reshape(channels * height, planes.shape[2])
        across = np.empty((channels * height, width), np.float32)
        for block in plan.width_blocks:
            np.matmul(rows[:, block.inputs], block.matrix.T, out=across[:, block.outputs])
        planes = across
    return planes.reshape(channels, height, width)


def resize_frame(frame: np.ndarray, plan: ResizePlan, out: np.ndarray) -> None:
    """One uint8 frame [H, W, C] resized by `plan` into `out` (uint8 [height, width, C]), equal to torch's
    antialiased bicubic interpolate followed by clamp, round (half to even) and uint8.

    A caller that decodes a video frame by frame resizes each one as it comes, so only the output (and a few
    float32 planes of one frame) stays in memory."""
    channels = frame.shape[2]
    height, width = out.shape[:2]
    values = fast_values(frame, plan)
    rounded = np.rint(values)  # half to even, like torch.round
    # Pixels this close to a midpoint may round differently from torch: those get torch's exact value.
    offset = np.abs(np.subtract(values, rounded, out=values), out=values)  # values is a buffer of ours
    near = np.flatnonzero(offset >= plan.near_midpoint)
    np.clip(rounded, 0, 255, out=rounded)
    out[...] = rounded.astype(np.uint8).transpose(1, 2, 0)  # interleaving bytes beats floats
    if near.size:
        chans, rows, cols = np.unravel_index(near, (channels, height, width))
        exact = exact_values(frame, rows, cols, chans, plan.width, plan.height)
        out[rows, cols, chans] = np.clip(np.rint(exact), 0, 255)


def resize_bicubic_antialias(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [T, H, W, C] -> uint8 [T, height, width, C], equal to torch's antialiased bicubic interpolate
    (align_corners=False) followed by clamp, round (half to even) and uint8.

    Frames go one at a time, so the memory beyond the output is a few float32 frames."""
    if frames.dtype != np.uint8 or frames.ndim != 4:
        raise ValueError(f"expected uint8 frames [T, H, W, C], got {frames.dtype} {frames.shape}")
    if height < 1 or width < 1:
        raise ValueError(f"output size {height}x{width} is empty")
    count, in_height, in_width, channels = frames.shape
    plan = ResizePlan.build(in_height, in_width, height, width)
    resized = np.empty((count, height, width, channels), np.uint8)
    for index in range(count):
        resize_frame(frames[index], plan, resized[index])
    return resized
