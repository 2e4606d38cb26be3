"""What a VIDEO or IMAGE may make the preprocess step do: only real media containers (no file or URL
opened beyond the bytes sent), frame and second limits that hold for streams without a duration, and the
embedder's token budget checked before pixels are decoded."""

import io

import av
import numpy as np
import pytest

from backend.embedding.preprocess import EmbeddingPreprocessor
from backend.errors import InputError
from backend.media import video
from backend.media.image import image_patches
from backend.media.preparer import MediaPreparer
from backend.media.resize import resize_bicubic_antialias
from backend.settings import PreprocessSettings, VisionSettings
from tools import synthetic

LIMITS = video.VideoLimits(
    max_bytes=1 << 30, max_seconds=3600, max_frame_pixels=1 << 30, max_decoded_frames=100_000
)
# (container format, codec, pixel format) written with PyAV, beyond tools.synthetic's mp4, webm and gif.
MORE_CONTAINERS = {
    "mkv": ("matroska", "libx264", "yuv420p"),
    "mov": ("mov", "libx264", "yuv420p"),
    "avi": ("avi", "mpeg4", "yuv420p"),
    "h264": ("h264", "libx264", "yuv420p"),
}


def encode(frames: np.ndarray, kind: str, fps: int = 8) -> bytes:
    container_format, codec, pixel_format = MORE_CONTAINERS[kind]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pixel_format
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def media(kind: str, seconds: int = 4, fps: int = 8, width: int = 96, height: int = 64) -> bytes:
    if kind in synthetic.CONTAINERS:
        return synthetic.video(seconds=seconds, fps=fps, width=width, height=height, kind=kind)
    return encode(synthetic.video_frames(seconds * fps, width, height), kind, fps)


@pytest.fixture(scope="module")
def embedder(tiny_model_path):
    return EmbeddingPreprocessor(PreprocessSettings(model_path=str(tiny_model_path)))


@pytest.fixture
def local_video(tmp_path, monkeypatch):
    """A video file in the working directory, where a concat script would look for it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.mp4").write_bytes(media("mp4"))
    return "secret.mp4"


def test_a_concat_script_is_what_ffmpeg_would_follow(local_video):
    # The reproduction: FFmpeg with every demuxer allowed reads the file the script names.
    script = f"ffconcat version 1.0\nfile {local_video}\n".encode()
    with av.open(io.BytesIO(script)) as container:
        assert container.format.name == "concat"
        assert sum(1 for _ in container.decode(video=0)) == 32


@pytest.mark.parametrize(
    "blob",
    [
        "ffconcat version 1.0\nfile {name}\n",
        "#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4,\n{name}\n#EXT-X-ENDLIST\n",
        '<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011"><Period><AdaptationSet>'
        '<Representation id="1" bandwidth="1"><BaseURL>{name}</BaseURL></Representation>'
        "</AdaptationSet></Period></MPD>",
        "concat:{name}|{name}",
        "subfile,,start,0,end,0,,:{name}",
        "file:{name}",
    ],
)
def test_files_named_inside_a_video_are_never_opened(embedder, local_video, blob):
    request = {
        "TEXT": np.array([[b"fine"], [b""]], dtype=object),
        "VIDEO": np.array([[b""], [blob.format(name=local_video).encode()]], dtype=object),
    }
    with pytest.raises(InputError, match="not a decodable video in an accepted container") as failure:
        embedder.prepare_request(request)
    assert failure.value.row == 1 and failure.value.input == "VIDEO[0]"
    assert str(failure.value).startswith("row 1: VIDEO[0]: ")


@pytest.mark.parametrize("kind", ["mp4", "webm", "gif", "mkv", "mov", "avi", "h264"])
def test_real_containers_still_decode(kind):
    sampled = video.decode_and_sample(media(kind), 1.0, 64, LIMITS)
    assert sampled.total_frames == 32 and sampled.frames.shape == (4, 64, 96, 3)


def test_a_container_left_out_of_the_list_is_refused():
    limits = video.VideoLimits(1 << 30, 3600, 1 << 30, 100_000, containers="matroska,webm")
    assert video.decode_and_sample(media("webm"), 1.0, 64, limits).total_frames == 32
    with pytest.raises(InputError, match=r"accepted container \(matroska,webm\)"):
        video.decode_and_sample(media("mp4"), 1.0, 64, limits)


def test_a_raw_stream_without_a_duration_is_bounded_by_its_frames():
    data = media("h264", seconds=6, fps=8)
    header = video.read_header(data, LIMITS)
    # A bare stream has no duration and FFmpeg gives it 25 fps (as the official readers see it too).
    assert header.total_frames == 48 and header.fps == pytest.approx(25.0)
    with pytest.raises(InputError, match=r"video lasts over 1.5 s \(38\+ frames at 25 fps\)"):
        video.decode_and_sample(data, 1.0, 64, video.VideoLimits(1 << 30, 1.5, 1 << 30, 100_000))
    with pytest.raises(InputError, match="over 40 frames"):
        video.decode_and_sample(data, 1.0, 64, video.VideoLimits(1 << 30, 3600, 1 << 30, 40))


def test_frames_that_change_size_mid_stream_are_refused():
    small = encode(synthetic.video_frames(16, 96, 64), "h264")
    large = encode(synthetic.video_frames(16, 128, 96, seed=1), "h264")
    with pytest.raises(InputError, match=r"change size mid-stream \(96x64 -> 128x96\)"):
        video.decode_and_sample(small + large, 1.0, 64, LIMITS)


def test_resizing_while_decoding_equals_resizing_after():
    data = media("mp4", seconds=8, fps=4, width=320, height=240)
    whole = video.decode_and_sample(data, 1.0, 64, LIMITS)
    each = video.decode_and_sample(data, 1.0, 64, LIMITS, size=lambda count, h, w: (128, 160))
    assert each.frames.shape == (8, 128, 160, 3)
    np.testing.assert_array_equal(each.frames, resize_bicubic_antialias(whole.frames, 128, 160))


def test_a_video_over_the_token_budget_is_refused_before_decoding():
    data = media("mp4", seconds=8, fps=4, width=320, height=240)
    prepared = video.video_patches(data, 1.0, 64, 128 * 1024, 768 * 1024, LIMITS)
    tokens = prepared.patches.token_count
    fits = video.video_patches(data, 1.0, 64, 128 * 1024, 768 * 1024, LIMITS, max_tokens=tokens)
    np.testing.assert_array_equal(fits.patches.patches, prepared.patches.patches)
    with pytest.raises(InputError, match=f"video needs {tokens} tokens .*, over the {tokens - 1} its item"):
        video.video_patches(data, 1.0, 64, 128 * 1024, 768 * 1024, LIMITS, max_tokens=tokens - 1)


def test_the_item_budget_spans_its_images_and_videos():
    data = media("mp4", seconds=8, fps=4, width=320, height=240)
    image = synthetic.encode_image(synthetic.photo(640, 480))
    unbounded = MediaPreparer(VisionSettings(), {"image": 0.0, "video": 0.0})
    prepared = unbounded.prepare((image,), (data,))
    video_tokens, image_tokens = prepared.videos[0].patches.token_count, prepared.images[0].token_count
    enough = MediaPreparer(
        VisionSettings(), {"image": 0.0, "video": 0.0}, max_tokens=video_tokens + image_tokens
    )
    assert enough.prepare((image,), (data,)).image_token_counts == [image_tokens]
    short = MediaPreparer(
        VisionSettings(), {"image": 0.0, "video": 0.0}, max_tokens=video_tokens + image_tokens - 1
    )
    with pytest.raises(InputError, match=f"IMAGE\\[0\\]: image needs {image_tokens} tokens") as failure:
        short.prepare((image,), (data,))
    assert f"over the {image_tokens - 1} its item has left" in str(failure.value)


def test_an_image_over_the_token_budget_is_refused_from_its_header():
    image = synthetic.encode_image(synthetic.photo(640, 480))
    tokens = image_patches(image, 4096, 1843200, 1 << 30, 1 << 30).token_count
    # Only the header is read: the bytes cut after it are refused the same way, not as undecodable.
    with pytest.raises(InputError, match=f"image needs {tokens} tokens"):
        image_patches(image[:200], 4096, 1843200, 1 << 30, 1 << 30, max_tokens=tokens - 1)


def test_the_embedder_refuses_a_long_video_by_its_tokens(embedder):
    # 64 frames of 720p need 23,040 tokens, over max_length 8192: refused with no frame decoded.
    data = media("mp4", seconds=64, fps=1, width=1280, height=720)
    request = {"VIDEO": np.array([[data]], dtype=object)}
    with pytest.raises(
        InputError, match=r"row 0: VIDEO\[0\]: video needs 23040 tokens \(64 frames at 1152x640\)"
    ):
        embedder.prepare_request(request)
