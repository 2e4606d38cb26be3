import numpy as np
import pytest
import torch

from backend.errors import InputError
from backend.media import image as vision
from backend.media import video
from tests.drivers import resize_frames
from tools import synthetic

LIMITS = video.VideoLimits(
    max_bytes=1 << 30, max_seconds=3600, max_frame_pixels=1 << 30, max_decoded_frames=100_000
)


@pytest.mark.parametrize(
    ("total", "fps", "expected"),
    [
        (240, 24.0, 10),  # 10 s at 1 fps
        (48, 24.0, 4),  # 2 s -> at least 4 frames
        (3, 24.0, 2),  # fewer frames than the minimum -> all, rounded down to even
        (24 * 600, 24.0, 64),  # 10 min -> capped at 64
        (250, 25.0, 10),
        (75, 30.0, 4),  # 2.5 s -> 2.5 frames -> min 4
    ],
)
def test_sample_count_follows_qwen_vl_utils(total, fps, expected):
    assert video.sample_count(total, fps, 1.0, 64) == expected


def test_single_frame_video_is_rejected():
    with pytest.raises(InputError, match="at least 2"):
        video.sample_count(1, 24.0, 1.0, 64)


def test_sample_indices_are_evenly_spaced_and_rounded():
    assert video.sample_indices(240, 10) == np.linspace(0, 239, 10).round().astype(int).tolist()
    assert video.sample_indices(30, 4) == [0, 10, 19, 29]


def test_group_timestamps_average_each_frame_pair():
    assert video.group_timestamps([0, 10, 19, 29], 10.0) == pytest.approx([0.5, 2.4])
    assert video.group_timestamps([0, 24, 48], 24.0) == pytest.approx([0.5, 2.0])  # odd: last frame repeated


@pytest.mark.parametrize("kind", ["mp4", "webm", "gif"])
def test_containers_decode_and_sample(kind):
    data = synthetic.video(seconds=4, fps=8, width=96, height=64, kind=kind)
    sampled = video.decode_and_sample(data, 1.0, 64, LIMITS)
    assert sampled.total_frames == 32
    assert sampled.source_fps == pytest.approx(8.0, rel=0.05)  # GIF delays are whole centiseconds
    assert sampled.frame_indices == video.sample_indices(32, 4)
    assert sampled.frames.shape == (4, 64, 96, 3)


def test_decoded_frames_are_the_frames_that_were_encoded():
    frames = synthetic.video_frames(16, 96, 64, seed=2)
    data = synthetic.encode_video(frames, fps=8, kind="webm")
    sampled = video.decode_and_sample(data, 1.0, 64, LIMITS)
    for position, index in enumerate(sampled.frame_indices):
        error = np.abs(sampled.frames[position].astype(int) - frames[index].astype(int)).mean()
        assert error < 12, (index, error)  # lossy codec, but clearly the same frame


def test_resize_matches_torch_bicubic_antialias_with_uint8_rounding():
    frames = synthetic.video_frames(2, 320, 240)
    resized = resize_frames(frames, 128 * 1024, 768 * 1024)
    h, w = vision.smart_resize(240, 320, 32, 128 * 1024, 768 * 1024)
    assert resized.shape == (2, h, w, 3) and resized.dtype == np.uint8
    reference = torch.nn.functional.interpolate(
        torch.from_numpy(frames).permute(0, 3, 1, 2).float(), size=(h, w), mode="bicubic", antialias=True
    )
    expected = reference.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(resized, expected)


def test_video_patch_layout_equals_the_qwen3vl_video_processor():
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    from tests.reference import raw_video_patches

    frames = np.random.default_rng(0).integers(0, 256, size=(4, 64, 96, 3), dtype=np.uint8)
    ours = vision.patchify(frames)
    # Rescale/normalise need torchvision (absent here); they are elementwise, so compare raw values.
    reference = raw_video_patches(
        Qwen3VLVideoProcessor(), [torch.from_numpy(frames).permute(0, 3, 1, 2).float()]
    )
    assert list(reference["video_grid_thw"][0]) == list(ours.grid_thw)
    np.testing.assert_array_equal(reference["pixel_values_videos"].numpy(), ours.patches.astype(np.float32))


def test_video_patches_frame_budget_and_timestamps():
    data = synthetic.video(seconds=8, fps=24, width=320, height=240)
    prepared = video.video_patches(data, 1.0, 64, 128 * 32 * 32, 768 * 32 * 32, LIMITS)
    t, h, w = prepared.patches.grid_thw
    assert t == 4  # 8 frames at 1 fps, 2 per temporal patch
    assert (h * 16) * (w * 16) <= 768 * 32 * 32
    assert prepared.timestamps == pytest.approx(video.group_timestamps(video.sample_indices(192, 8), 24.0))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\x00" * 4096, "not a decodable video"),
        (b"RIFF....WEBPVP8 ", "not a decodable video|at least 2"),
    ],
)
def test_bad_video_bytes_are_input_errors(data, message):
    with pytest.raises(InputError, match=message):
        video.decode_and_sample(data, 1.0, 64, LIMITS)


def test_truncated_video_is_an_input_error_or_decodes_what_is_there():
    data = synthetic.video(seconds=2, fps=8, width=96, height=64)
    with pytest.raises(InputError):
        video.decode_and_sample(data[:200], 1.0, 64, LIMITS)


def test_video_limits_are_checked_from_the_header():
    data = synthetic.video(seconds=4, fps=8, width=96, height=64)
    with pytest.raises(InputError, match="lasts"):
        video.decode_and_sample(data, 1.0, 64, video.VideoLimits(1 << 30, 2.0, 1 << 30, 100_000))
    with pytest.raises(InputError, match="frames are 96x64"):
        video.decode_and_sample(data, 1.0, 64, video.VideoLimits(1 << 30, 100, 1000, 100_000))
    with pytest.raises(InputError, match="bytes, over the limit"):
        video.decode_and_sample(data, 1.0, 64, video.VideoLimits(100, 100, 1 << 30, 100_000))


def test_a_stream_without_a_decoder_is_an_input_error():
    # A mutated fourcc left PyAV a stream with no codec context: once "'NoneType' object has no attribute
    # 'width'" (INTERNAL).
    data = synthetic.video(seconds=2, fps=8, width=96, height=64)
    assert b"avc1" in data  # the sample entry (and the brand list) name the codec
    with pytest.raises(InputError, match="codec is not supported"):
        video.decode_and_sample(data.replace(b"avc1", b"zzzz"), 1.0, 64, LIMITS)
