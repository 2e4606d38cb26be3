"""Seeded malformed requests against the served ensembles and their inner model steps, and how to judge the
answers. Used by the fuzz test (tests/integration/test_fuzz.py, a few hundred cases) and by the reliability
benchmark (perf.drills.reliability, thousands).

A case is one request: which model, over which transport (tritonclient HTTP or gRPC; raw HTTP bytes for
what tritonclient cannot send), its tensors, and what answers are acceptable:

- ``INVALID``: the client sent something we can classify -> HTTP 4xx / gRPC INVALID_ARGUMENT;
- ``OK``: odd but valid (special-token strings, truncated long texts) -> an answer with finite outputs;
- ``OK_OR_INVALID``: either is right (e.g. a mutated image that may still decode);
- ``TRITON_JSON``: a body Triton's own HTTP front parses before any model sees it; tritonserver 2.51 answers
  malformed JSON with HTTP 500 instead of 400 (docs/PLATFORM.md "Known limits"; 500 with Triton's own
  parser message is accepted, a 500 from our code is not).

Whatever the expectation, an INTERNAL from our code ("internal error: ..."), a hang, a dropped connection
or a dead server is a failure. Good requests interleaved with the cases must get exactly the answer they
got when sent alone before.
"""

from __future__ import annotations

import http.client
import json
import random
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

EMBEDDING = "qwen3_vl_embedding"
RERANKER = "qwen3_vl_reranker"
EMBEDDING_MODEL = "qwen3_vl_embedding_model"
RERANKER_MODEL = "qwen3_vl_reranker_model"

OK = "ok"
INVALID = "invalid"
OK_OR_INVALID = "ok-or-invalid"
TRITON_JSON = "triton-json"

# Outcome kinds of one answer.
ANSWERED_OK = "ok"
ANSWERED_INVALID = "invalid"  # HTTP 4xx / INVALID_ARGUMENT (and the other gRPC client-error codes)
ANSWERED_UNAVAILABLE = "unavailable"  # HTTP 503 / UNAVAILABLE (queue full, out of memory)
ANSWERED_INTERNAL = "internal"  # our own bug: "internal error: ..." or gRPC INTERNAL
ANSWERED_5XX = "5xx"  # another server error (Triton's front)
HUNG = "hang"  # no answer within the deadline
DROPPED = "dropped"  # connection refused / reset: the server may be dead

# A case answered later than this is a hang (the bound).
HANG_SECONDS = 10.0
# The tiny checkpoints' vocabulary (Qwen3-VL's) and widths.
VOCAB_SIZE = 151_936
IMAGE_TOKEN_ID = 151_655
PAD_TOKEN_ID = 151_643
PATCH_WIDTH = 1536

GRPC_CLIENT_ERRORS = ("INVALID_ARGUMENT", "NOT_FOUND", "OUT_OF_RANGE", "FAILED_PRECONDITION", "UNIMPLEMENTED")


@dataclass
class Tensor:
    name: str
    array: np.ndarray
    datatype: str


@dataclass
class Case:
    kind: str  # the generator that made it, e.g. "embedding/image-truncated"
    model: str
    transport: str  # "http", "grpc" or "raw-http"
    expect: str
    tensors: list[Tensor] = field(default_factory=list)
    body: bytes = b""  # raw-http only
    headers: dict[str, str] = field(default_factory=dict)  # raw-http only
    # A good request: the answer must equal the one it got alone (outputs compared by name).
    good: bool = False


@dataclass
class Outcome:
    kind: str  # one of the ANSWERED_* / HUNG / DROPPED kinds
    status: str  # HTTP status or gRPC code
    message: str
    seconds: float
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


def judge(case: Case, outcome: Outcome) -> str | None:
    """Why the outcome is wrong for the case, or None if it is acceptable."""
    if outcome.seconds > HANG_SECONDS or outcome.kind == HUNG:
        return f"no answer within {HANG_SECONDS:g} s ({outcome.seconds:.1f} s)"
    if outcome.kind in (ANSWERED_INTERNAL, DROPPED, ANSWERED_UNAVAILABLE):
        return f"{outcome.kind}: {outcome.status} {outcome.message[:300]}"
    if outcome.kind == ANSWERED_5XX and not (case.expect == TRITON_JSON and "parse" in outcome.message):
        return f"server error {outcome.status}: {outcome.message[:300]}"
    if outcome.kind == ANSWERED_OK:
        if case.expect == INVALID:
            return "accepted, expected INVALID_ARG"
        bad = [name for name, array in outcome.outputs.items() if not np.isfinite(array).all()]
        if bad:
            return f"non-finite outputs {bad}"
    elif outcome.kind == ANSWERED_INVALID and case.expect == OK:
        return f"refused, expected an answer: {outcome.status} {outcome.message[:300]}"
    return None


# --- transports --------------------------------------------------------------------------------------------


class Transports:
    """One tritonclient HTTP and gRPC client and a raw HTTP connection to one server; not thread-safe."""

    def __init__(self, http_url: str, grpc_url: str, timeout: float = HANG_SECONDS + 5.0) -> None:
        import tritonclient.grpc as grpcclient
        import tritonclient.http as httpclient

        self.http_module, self.grpc_module = httpclient, grpcclient
        self.http_url, self.timeout = http_url, timeout
        self.http = httpclient.InferenceServerClient(
            http_url, connection_timeout=timeout, network_timeout=timeout
        )
        self.grpc = grpcclient.InferenceServerClient(grpc_url)

    def close(self) -> None:
        self.http.close()
        self.grpc.close()

    def send(self, case: Case) -> Outcome:
        started = time.perf_counter()
        if case.transport == "raw-http":
            kind, status, message = self._raw_http(case)
            return Outcome(kind, status, message, time.perf_counter() - started)
        module = self.http_module if case.transport == "http" else self.grpc_module
        inputs = []
        for tensor in case.tensors:
            infer_input = module.InferInput(tensor.name, list(tensor.array.shape), tensor.datatype)
            infer_input.set_data_from_numpy(tensor.array)
            inputs.append(infer_input)
        outputs = ("SCORE",) if case.model == RERANKER_MODEL or case.model == RERANKER else ("EMBEDDING",)
        try:
            if case.transport == "http":
                result = self.http.infer(case.model, inputs)
            else:
                result = self.grpc.infer(case.model, inputs, client_timeout=self.timeout)
        except Exception as error:  # noqa: BLE001 - every failure is classified below
            return self._classify_error(error, time.perf_counter() - started)
        seconds = time.perf_counter() - started
        answer = {name: result.as_numpy(name) for name in (*outputs, "TOKEN_COUNT")}
        return Outcome(ANSWERED_OK, "200", "", seconds, {k: v for k, v in answer.items() if v is not None})

    @staticmethod
    def _classify_error(error: Exception, seconds: float) -> Outcome:
        from tritonclient.utils import InferenceServerException

        if not isinstance(error, InferenceServerException):
            text = f"{type(error).__name__}: {error}"
            timed_out = "timed out" in text.lower() or "timeout" in type(error).__name__.lower()
            return Outcome(HUNG if timed_out else DROPPED, "-", text, seconds)
        status, message = str(error.status()), error.message() or ""
        code = status.removeprefix("StatusCode.")
        if "internal error:" in message or code == "INTERNAL":
            kind = ANSWERED_INTERNAL
        elif code.isdigit() and 400 <= int(code) < 500 or code in GRPC_CLIENT_ERRORS:
            kind = ANSWERED_INVALID
        elif code in ("503", "UNAVAILABLE", "RESOURCE_EXHAUSTED"):
            kind = ANSWERED_UNAVAILABLE
        elif code == "DEADLINE_EXCEEDED":
            kind = HUNG
        elif code.isdigit() and int(code) >= 500:
            kind = ANSWERED_5XX
        elif code == "None" and ("timed out" in message.lower() or "timeout" in message.lower()):
            kind = HUNG
        else:
            kind = DROPPED
        return Outcome(kind, status, message, seconds)

    def _raw_http(self, case: Case) -> tuple[str, str, str]:
        host, _, port = self.http_url.rpartition(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=self.timeout)
        try:
            headers = {"Content-Type": "application/octet-stream", **case.headers}
            connection.request("POST", f"/v2/models/{case.model}/infer", body=case.body, headers=headers)
            response = connection.getresponse()
            text = response.read().decode(errors="replace")
        except TimeoutError as error:
            return HUNG, "-", str(error)
        except OSError as error:
            return DROPPED, "-", f"{type(error).__name__}: {error}"
        finally:
            connection.close()
        status = response.status
        if status == 200:
            return ANSWERED_OK, "200", ""
        if "internal error:" in text:
            return ANSWERED_INTERNAL, str(status), text
        if 400 <= status < 500:
            return ANSWERED_INVALID, str(status), text
        if status == 503:
            return ANSWERED_UNAVAILABLE, str(status), text
        return ANSWERED_5XX, str(status), text


# --- media -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Media:
    png: bytes
    jpeg: bytes
    gif_video: bytes
    mp4_video: bytes
    webm_video: bytes
    odd_images: tuple[bytes, ...]  # valid but unusual: modes, formats, 1x1
    extreme_images: tuple[bytes, ...]  # aspect ratio over 200:1
    odd_videos: tuple[bytes, ...]  # raw H.264 / MJPEG streams, 2x2 pixels, 240 fps
    extreme_videos: tuple[bytes, ...]  # aspect ratio over 200:1


def _stream(frames: np.ndarray, container: str, codec: str, pixel_format: str) -> bytes:
    """Frames as a bare elementary stream (no container, so no duration)."""
    import io

    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as output:
        stream = output.add_stream(codec, rate=4)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pixel_format
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


def build_media() -> Media:
    """Small, deterministic files; the bad media cases are derived from them."""
    from tools import synthetic

    photo = synthetic.photo(48, 40, seed=8)
    odd_images = tuple(
        synthetic.encode_image(photo.convert(mode), fmt)
        for mode, fmt in (("P", "PNG"), ("LA", "PNG"), ("1", "PNG"), ("CMYK", "JPEG"), ("RGB", "TIFF"),
                          ("RGB", "BMP"), ("RGB", "WEBP"), ("RGBA", "PNG"))
    ) + (synthetic.encode_image(synthetic.photo(1, 1), "PNG"),)  # fmt: skip
    frames = synthetic.video_frames(4, 48, 32, seed=9)
    return Media(
        png=synthetic.encode_image(synthetic.photo(96, 64, seed=3), "PNG"),
        jpeg=synthetic.encode_image(synthetic.photo(128, 96, seed=4), "JPEG", quality=85),
        gif_video=synthetic.video(seconds=2, fps=2, width=64, height=64, kind="gif", seed=5),
        mp4_video=synthetic.video(seconds=2, fps=4, width=96, height=64, kind="mp4", seed=6),
        webm_video=synthetic.video(seconds=2, fps=4, width=64, height=64, kind="webm", seed=7),
        odd_images=odd_images,
        extreme_images=(
            synthetic.encode_image(synthetic.photo(1, 300), "PNG"),
            synthetic.encode_image(synthetic.photo(2000, 2), "PNG"),
        ),
        odd_videos=(
            _stream(frames, "h264", "libx264", "yuv420p"),
            _stream(frames, "mjpeg", "mjpeg", "yuvj420p"),
            synthetic.video(seconds=1, fps=2, width=2, height=2),
            synthetic.video(seconds=1, fps=240, width=16, height=16),
        ),
        extreme_videos=(
            synthetic.video(seconds=1, fps=2, width=4, height=1024),
            synthetic.video(seconds=1, fps=2, width=1200, height=4),
        ),
    )


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels but whose data is a few bytes (a decompression-bomb
    header without the bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


# Header sizes no server should decode: too many pixels, or an aspect ratio over 200:1.
CLAIMED_SIZES = ((100_000, 100_000), (65_535, 65_535), (1, 100_000), (100_000, 3))


def mutate(data: bytes, rng: random.Random, flips: int) -> bytes:
    """`flips` random bytes overwritten (the first 8 kept, so the container is still recognised)."""
    out = bytearray(data)
    for _ in range(flips):
        out[rng.randrange(min(8, len(out) - 1), len(out))] = rng.randrange(256)
    return bytes(out)


# --- tensors -----------------------------------------------------------------------------------------------


def text_tensor(name: str, values: list[bytes | str]) -> Tensor:
    rows = [[v.encode() if isinstance(v, str) else v] for v in values]
    return Tensor(name, np.array(rows, dtype=object), "BYTES")


def blobs_tensor(name: str, rows: list[list[bytes]]) -> Tensor:
    width = max(1, max(len(row) for row in rows))
    array = np.full((len(rows), width), b"", dtype=object)
    for index, row in enumerate(rows):
        for slot, blob in enumerate(row):
            array[index, slot] = blob
    return Tensor(name, array, "BYTES")


def int_tensor(name: str, values, dtype=np.int32, datatype: str = "INT32") -> Tensor:
    return Tensor(name, np.array(values, dtype=dtype), datatype)


def good_cases(media: Media) -> list[Case]:
    """The good requests: each kind of row of both ensembles (sent alone first, then between the cases)."""
    embedding = [
        ("text", [text_tensor("TEXT", ["The capital of China is Beijing."])]),
        (
            "query+dims",
            [
                text_tensor("TEXT", ["What is the capital of China?"]),
                text_tensor("INSTRUCTION", ["Retrieve passages that answer the query"]),
                int_tensor("DIMENSIONS", [[64]]),
            ],
        ),
        ("image", [blobs_tensor("IMAGE", [[media.png]])]),
        ("video", [blobs_tensor("VIDEO", [[media.gif_video]]), text_tensor("TEXT", ["a moving disc"])]),
        (
            "raw-ids",
            [
                int_tensor("TOKEN_IDS", [[785, 6722, 315, 5616, 374, 26549, 13]], np.int64, "INT64"),
                Tensor("RAW", np.array([[True]]), "BOOL"),
            ],
        ),
        ("two-rows", [text_tensor("TEXT", ["first row", "second row, a little longer"])]),
    ]
    reranker = [
        (
            "text",
            [
                text_tensor("QUERY_TEXT", ["what is the capital of China?"]),
                text_tensor("DOCUMENT_TEXT", ["Beijing is the capital of China."]),
            ],
        ),
        (
            "image-doc",
            [
                text_tensor("QUERY_TEXT", ["a colourful picture"]),
                blobs_tensor("DOCUMENT_IMAGE", [[media.jpeg]]),
                text_tensor("INSTRUCTION", ["Judge whether the image matches"]),
            ],
        ),
    ]
    cases = []
    for transport in ("http", "grpc"):
        for name, tensors in embedding:
            cases.append(Case(f"good/embedding/{name}", EMBEDDING, transport, OK, tensors, good=True))
        for name, tensors in reranker:
            cases.append(Case(f"good/reranker/{name}", RERANKER, transport, OK, tensors, good=True))
    return cases


# --- malformed cases, one generator per kind ----------------------------------------------------------------
# Each takes the random source and the media and returns (model, expectation, tensors).

Made = tuple[str, str, list[Tensor]]
# `heavy`: the case may cost a full max_length forward (tens of seconds on a busy 2-core host).


def _text(rng: random.Random) -> Tensor:
    return text_tensor("TEXT", [f"fuzz row {rng.randrange(10**6)}"])


def wrong_dtype(rng: random.Random, media: Media, heavy: bool) -> Made:
    choices = [
        Tensor("TEXT", np.array([[rng.randrange(100)]], dtype=np.int32), "INT32"),
        Tensor("TEXT", np.array([[1.5]], dtype=np.float32), "FP32"),
        Tensor("DIMENSIONS", np.array([[64.0]], dtype=np.float32), "FP32"),
        Tensor("DIMENSIONS", np.array([[64]], dtype=np.int64), "INT64"),
        Tensor("DIMENSIONS", np.array([[b"64"]], dtype=object), "BYTES"),
        Tensor("RAW", np.array([[1]], dtype=np.int32), "INT32"),
        Tensor("TOKEN_IDS", np.array([[1.0, 2.0]], dtype=np.float32), "FP32"),
        Tensor("IMAGE", np.frombuffer(media.png[:64], dtype=np.uint8).reshape(1, -1), "UINT8"),
    ]
    bad = rng.choice(choices)
    tensors = [bad] if bad.name == "TEXT" else [_text(rng), bad]
    return EMBEDDING, INVALID, tensors


def wrong_shape(rng: random.Random, media: Media, heavy: bool) -> Made:
    choices = [
        [Tensor("TEXT", np.array([[b"a", b"b"]], dtype=object), "BYTES")],
        [Tensor("TEXT", np.array([[[b"a"]]], dtype=object), "BYTES")],
        [_text(rng), int_tensor("DIMENSIONS", [[64, 64, 64]])],
        [_text(rng), Tensor("RAW", np.array([[True, False]]), "BOOL")],
        [
            _text(rng),
            text_tensor("INSTRUCTION", ["x"]),
            Tensor("DIMENSIONS", np.zeros((1, 0), np.int32), "INT32"),
        ],
    ]
    return EMBEDDING, INVALID, rng.choice(choices)


def batch_sizes(rng: random.Random, media: Media, heavy: bool) -> Made:
    choice = rng.randrange(4)
    if choice == 0:  # over max_batch_size (64)
        return EMBEDDING, INVALID, [text_tensor("TEXT", [f"row {i}" for i in range(65 + rng.randrange(40))])]
    if choice == 1:  # inputs disagree on the batch size
        return EMBEDDING, INVALID, [text_tensor("TEXT", ["a", "b"]), int_tensor("DIMENSIONS", [[64]])]
    if choice == 2:
        return (
            RERANKER,
            INVALID,
            [text_tensor("QUERY_TEXT", ["q"] * 3), text_tensor("DOCUMENT_TEXT", ["d"] * 2)],
        )
    return EMBEDDING, INVALID, [Tensor("TEXT", np.zeros((0, 1), dtype=object), "BYTES")]


def missing_inputs(rng: random.Random, media: Media, heavy: bool) -> Made:
    choices = [
        (EMBEDDING, [text_tensor("INSTRUCTION", ["only an instruction"])]),
        (EMBEDDING, [int_tensor("DIMENSIONS", [[64]])]),
        (EMBEDDING, [text_tensor("TEXT", [""])]),
        (EMBEDDING, [blobs_tensor("IMAGE", [[b""]])]),
        (RERANKER, [text_tensor("QUERY_TEXT", ["a query without documents"])]),
        (RERANKER, [text_tensor("DOCUMENT_TEXT", ["a document without a query"])]),
        (RERANKER, [text_tensor("INSTRUCTION", ["nothing else"])]),
        (EMBEDDING, [text_tensor("UNKNOWN_INPUT", ["x"])]),
    ]
    model, tensors = rng.choice(choices)
    return model, INVALID, tensors


def dimensions(rng: random.Random, media: Media, heavy: bool) -> Made:
    value = rng.choice([-1, -(2**31), 2**31 - 1, 1, 63, 129, 4096, 100_000])
    return EMBEDDING, INVALID, [_text(rng), int_tensor("DIMENSIONS", [[value]])]


def non_utf8(rng: random.Random, media: Media, heavy: bool) -> Made:
    blob = rng.choice(
        [
            b"caf\xe9",
            b"\xff\xfe\xfd",
            b"\xc0\x80",  # overlong NUL
            b"\xed\xa0\x80",  # a UTF-16 surrogate
            bytes(rng.randrange(128, 256) for _ in range(rng.randrange(1, 64))),
        ]
    )
    where = rng.choice(["TEXT", "INSTRUCTION", "QUERY_TEXT", "DOCUMENT_TEXT", "RR_INSTRUCTION"])
    if where in ("TEXT", "INSTRUCTION"):
        tensors = (
            [text_tensor("TEXT", ["fine"]), text_tensor(where, [blob])]
            if where == "INSTRUCTION"
            else [text_tensor("TEXT", [blob])]
        )
        return EMBEDDING, INVALID, tensors
    names = {"QUERY_TEXT": "q", "DOCUMENT_TEXT": "d"}
    tensors = [text_tensor(name, [blob if name == where else value]) for name, value in names.items()]
    if where == "RR_INSTRUCTION":
        tensors.append(text_tensor("INSTRUCTION", [blob]))
    return RERANKER, INVALID, tensors


def _media_input(rng: random.Random, kind: str, blob: bytes, expect: str) -> Made:
    """`blob` as the embedding's IMAGE / VIDEO, or half the time as one side of a rerank pair."""
    if rng.random() < 0.5:
        return EMBEDDING, expect, [blobs_tensor(kind, [[blob]])]
    side = rng.choice(["QUERY", "DOCUMENT"])
    other = "DOCUMENT" if side == "QUERY" else "QUERY"
    return (
        RERANKER,
        expect,
        [blobs_tensor(f"{side}_{kind}", [[blob]]), text_tensor(f"{other}_TEXT", ["text"])],
    )


def _image_input(rng: random.Random, blob: bytes, expect: str) -> Made:
    return _media_input(rng, "IMAGE", blob, expect)


def bad_image(rng: random.Random, media: Media, heavy: bool) -> Made:
    source = rng.choice([media.png, media.jpeg])
    choice = rng.randrange(6)
    if choice == 0:
        return _image_input(rng, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2048))), INVALID)
    if choice == 1:  # truncated: header intact, data cut
        return _image_input(rng, source[: rng.randrange(8, len(source) // 2)], OK_OR_INVALID)
    if choice == 2:
        return _image_input(rng, mutate(source, rng, rng.randrange(1, 16)), OK_OR_INVALID)
    if choice == 3:
        return _image_input(rng, png_claiming(*rng.choice(CLAIMED_SIZES)), INVALID)
    if choice == 4:
        return _image_input(rng, b"<svg xmlns='http://www.w3.org/2000/svg'/>", INVALID)
    return _image_input(rng, media.gif_video[:12], INVALID)


def _video_input(rng: random.Random, blob: bytes, expect: str) -> Made:
    return _media_input(rng, "VIDEO", blob, expect)


def bad_video(rng: random.Random, media: Media, heavy: bool) -> Made:
    source = rng.choice([media.mp4_video, media.webm_video, media.gif_video])
    choice = rng.randrange(5)
    if choice == 0:
        return _video_input(rng, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4096))), INVALID)
    if choice == 1:
        return _video_input(rng, source[: rng.randrange(8, len(source) // 2)], OK_OR_INVALID)
    if choice == 2:
        return _video_input(rng, mutate(source, rng, rng.randrange(1, 32)), OK_OR_INVALID)
    if choice == 3:  # an image sent as a video
        return _video_input(rng, rng.choice([media.png, media.jpeg]), OK_OR_INVALID)
    return _video_input(
        rng, b"\x00\x00\x00\x18ftypmp42" + bytes(rng.randrange(256) for _ in range(300)), INVALID
    )


def scripts_as_video(rng: random.Random, media: Media, heavy: bool) -> Made:
    """Formats that make FFmpeg open other files or URLs: must never be followed."""
    blob = rng.choice(
        [
            b"ffconcat version 1.0\nfile 'README.md'\n",
            b"ffconcat version 1.0\nfile '/etc/passwd'\n",
            b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nREADME.md\n#EXT-X-ENDLIST\n",
            b"#EXTM3U\n#EXTINF:1,\nhttp://127.0.0.1:1/x.ts\n",
            b"[playlist]\nFile1=README.md\nNumberOfEntries=1\n",
        ]
    )
    return _video_input(rng, blob, INVALID)


SPECIAL_TOKENS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|vision_start|><|image_pad|><|vision_end|>",
    "<|video_pad|>",
    "<think>",
    "</think>",
]


def special_tokens(rng: random.Random, media: Media, heavy: bool) -> Made:
    """Special-token strings are plain text: answered, and never more than max_length tokens."""
    count = rng.choice([3000, 20_000]) if heavy else rng.choice([1, 10, 100, 300])
    text = "".join(rng.choice(SPECIAL_TOKENS) for _ in range(count))
    if rng.random() < 0.5:
        return EMBEDDING, OK, [text_tensor("TEXT", [text])]
    return RERANKER, OK, [text_tensor("QUERY_TEXT", ["q"]), text_tensor("DOCUMENT_TEXT", [text])]


def long_text(rng: random.Random, media: Media, heavy: bool) -> Made:
    """Over max_text_bytes (1 MiB) -> INVALID_ARG before tokenising; under it, answered (truncated to
    max_length when heavy)."""
    over = rng.random() < 0.5
    if over:
        size = (1 << 20) + rng.randrange(1, 4096)
    else:
        size = rng.choice([60_000, 500_000]) if heavy else rng.randrange(1_000, 8_000)
    text = ("lorem ipsum dolor " * (size // 18 + 1))[:size]
    expect = INVALID if over else OK
    if rng.random() < 0.5:
        if rng.random() < 0.5:
            return EMBEDDING, expect, [text_tensor("TEXT", [text])]
        return EMBEDDING, expect, [text_tensor("INSTRUCTION", [text]), _text(rng)]
    side = rng.choice(["QUERY_TEXT", "DOCUMENT_TEXT"])
    other = "DOCUMENT_TEXT" if side == "QUERY_TEXT" else "QUERY_TEXT"
    return RERANKER, expect, [text_tensor(side, [text]), text_tensor(other, ["x"])]


def raw_misuse(rng: random.Random, media: Media, heavy: bool) -> Made:
    raw = Tensor("RAW", np.array([[True]]), "BOOL")
    ids = int_tensor("TOKEN_IDS", [[1, 2, 3]], np.int64, "INT64")
    choices = [
        [ids],  # TOKEN_IDS without RAW
        [ids, raw, _text(rng)],  # both
        [raw, _text(rng), blobs_tensor("IMAGE", [[media.png]])],
        [raw, _text(rng), text_tensor("INSTRUCTION", ["no"])],
        [raw, int_tensor("TOKEN_IDS", [[VOCAB_SIZE + rng.randrange(10**6)]], np.int64, "INT64")],
        [raw, int_tensor("TOKEN_IDS", [[-rng.randrange(1, 2**62)]], np.int64, "INT64")],
        [raw, int_tensor("TOKEN_IDS", [[13] * 9000], np.int64, "INT64")],
        [Tensor("RAW", np.array([[False]]), "BOOL"), ids],
    ]
    return EMBEDDING, INVALID, rng.choice(choices)


def reranker_misc(rng: random.Random, media: Media, heavy: bool) -> Made:
    choices = [
        [text_tensor("QUERY_TEXT", [""]), text_tensor("DOCUMENT_TEXT", [""])],
        [text_tensor("QUERY_TEXT", ["q"]), Tensor("DOCUMENT_TEXT", np.array([[7]], np.int32), "INT32")],
        [
            text_tensor("QUERY_TEXT", ["q"]),
            text_tensor("DOCUMENT_TEXT", ["d"]),
            int_tensor("INSTRUCTION", [[1]]),
        ],
        [text_tensor("QUERY_TEXT", ["q"]), blobs_tensor("DOCUMENT_IMAGE", [[b"\x00" * 17] * 17])],
    ]
    return RERANKER, INVALID, rng.choice(choices)


def too_many_items(rng: random.Random, media: Media, heavy: bool) -> Made:
    if rng.random() < 0.5:
        return EMBEDDING, INVALID, [blobs_tensor("IMAGE", [[media.png] * 17])]
    return EMBEDDING, INVALID, [blobs_tensor("VIDEO", [[media.gif_video] * 5])]


def odd_media(rng: random.Random, media: Media, heavy: bool) -> Made:
    """Unusual but valid files are embedded; an aspect ratio over 200:1 is refused before resizing."""
    choice = rng.randrange(4)
    if choice == 0:
        return _image_input(rng, rng.choice(media.odd_images), OK)
    if choice == 1:
        return _image_input(rng, rng.choice(media.extreme_images), INVALID)
    if choice == 2:  # a bare stream has no container duration: bounded by decoded frames, may be refused
        return _video_input(rng, rng.choice(media.odd_videos), OK_OR_INVALID)
    return _video_input(rng, rng.choice(media.extreme_videos), INVALID)


def bad_row_among_good(rng: random.Random, media: Media, heavy: bool) -> Made:
    """Several rows, one of them bad: the request fails naming that row."""
    rows = rng.randrange(2, 6)
    bad = rng.randrange(rows)
    texts: list[bytes | str] = [f"good row {i}" for i in range(rows)]
    if rng.random() < 0.5:
        texts[bad] = b"\xff\xfe"
        return EMBEDDING, INVALID, [text_tensor("TEXT", texts)]
    images = [[media.png] for _ in range(rows)]
    images[bad] = [bytes(rng.randrange(256) for _ in range(64))]
    return EMBEDDING, INVALID, [text_tensor("TEXT", texts), blobs_tensor("IMAGE", images)]


# --- direct calls to the inner model steps ------------------------------------------------------------------


def _step(
    model: str, ids: list[list[int]], lengths, extra: list[Tensor] | None = None, dims=None
) -> list[Tensor]:
    tensors = [
        Tensor("INPUT_IDS", np.asarray(ids, dtype=np.int64), "INT64"),
        Tensor("SEQ_LEN", np.asarray(lengths, dtype=np.int64), "INT64"),
    ]
    if model == EMBEDDING_MODEL:
        rows = tensors[0].array.shape[0]
        tensors.append(int_tensor("EMBED_DIM", dims if dims is not None else [[0]] * rows))
    return tensors + (extra or [])


def _vision(grid: tuple[int, int, int], patches: int | None = None, width: int = PATCH_WIDTH) -> list[Tensor]:
    count = patches if patches is not None else max(0, grid[0] * grid[1] * grid[2])
    return [
        Tensor("IMAGE_PATCHES", np.zeros((1, count, width), dtype=np.uint8), "UINT8"),
        Tensor("IMAGE_GRID_THW", np.array([[grid]], dtype=np.int64), "INT64"),
    ]


def model_step(rng: random.Random, media: Media, heavy: bool) -> Made:
    model = rng.choice([EMBEDDING_MODEL, RERANKER_MODEL])
    ids = [[151644, 872, 198, 9707, 151645]]
    image_ids = [[1, IMAGE_TOKEN_ID, IMAGE_TOKEN_ID, 2]]
    choices = [
        _step(model, [[1, VOCAB_SIZE + rng.randrange(10**9)]], [[2]]),
        _step(model, [[1, -rng.randrange(1, 2**62)]], [[2]]),
        _step(model, ids, [[0]]),
        _step(model, ids, [[6 + rng.randrange(1000)]]),
        _step(model, ids, [[-rng.randrange(1, 2**62)]]),
        _step(model, ids, [[5], [5]]),  # SEQ_LEN has more rows than INPUT_IDS
        _step(model, image_ids, [[4]], _vision((1, 2, 2))),  # 2 placeholders, 1 token of patches
        _step(model, image_ids, [[4]], _vision((1, 1, 8))),  # odd grid
        _step(model, image_ids, [[4]], _vision((1, 2, 4), patches=3)),  # fewer patches than the grid
        _step(model, image_ids, [[4]], _vision((1, 2, 4), width=100)),
        _step(model, image_ids, [[4]], _vision((-1, 2, 4), patches=8)),
        _step(model, image_ids, [[4]], _vision((2**31, 2**31, 2), patches=8)),
        _step(model, image_ids, [[4]], [_vision((1, 2, 4))[0]]),  # patches without their grid
        _step(model, image_ids, [[4]], [_vision((1, 2, 4))[1]]),  # a grid without patches
    ]
    if model == EMBEDDING_MODEL:
        choices.append(_step(model, ids, [[5]], dims=[[rng.choice([5, -1, 63, 2**31 - 1])]]))
    return model, INVALID, rng.choice(choices)


GENERATORS: dict[str, Callable[[random.Random, Media, bool], Made]] = {
    "wrong-dtype": wrong_dtype,
    "wrong-shape": wrong_shape,
    "batch-size": batch_sizes,
    "missing-inputs": missing_inputs,
    "dimensions": dimensions,
    "non-utf8": non_utf8,
    "bad-image": bad_image,
    "bad-video": bad_video,
    "script-as-video": scripts_as_video,
    "special-tokens": special_tokens,
    "long-text": long_text,
    "raw-misuse": raw_misuse,
    "reranker": reranker_misc,
    "too-many-items": too_many_items,
    "odd-media": odd_media,
    "bad-row-among-good": bad_row_among_good,
    "model-step": model_step,
}


# --- raw HTTP bodies (Triton's own front parses these) -----------------------------------------------------


def raw_http(rng: random.Random, media: Media) -> Case:
    good = {"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": ["hello"]}]}
    header = json.dumps(
        {
            "inputs": [
                {"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}
            ]
        }
    ).encode()
    choice = rng.randrange(9)
    headers: dict[str, str] = {}
    expect = TRITON_JSON
    if choice == 0:  # truncated JSON
        text = json.dumps(good).encode()
        body = text[: rng.randrange(1, len(text) - 1)]
    elif choice == 1:
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 512)))
    elif choice == 2:
        body = rng.choice([b"[]", b"null", b"42", b'"inputs"', b"{}"])
    elif choice == 3:  # nested far less deep than the ~60,000 that overflow 2.51's recursive parser
        depth = rng.choice([10, 100, 1000])
        body = b'{"inputs":[{"name":"TEXT","shape":[1,1],"datatype":"BYTES","data":' + b"[" * depth
        body += b'"x"' + b"]" * depth + b"}]}"
    elif choice == 4:  # data disagrees with the shape
        body = json.dumps(
            {"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": ["a", "b", "c"]}]}
        ).encode()
        expect = INVALID
    elif choice == 5:  # binary part shorter than announced
        body = header + struct.pack("<I", 5) + b"hel"
        headers["Inference-Header-Content-Length"] = str(len(header))
    elif choice == 6:  # header length past the body, or cutting the JSON header short
        body = header + struct.pack("<I", 5) + b"hello"
        wrong = len(body) + rng.randrange(1, 10**6) if rng.random() < 0.5 else rng.randrange(1, len(header))
        headers["Inference-Header-Content-Length"] = str(wrong)
    elif choice == 7:  # negative binary size
        negative = header.replace(b'"binary_data_size": 9', b'"binary_data_size": -9')
        body = negative + struct.pack("<I", 5) + b"hello"
        headers["Inference-Header-Content-Length"] = str(len(negative))
    else:  # unknown model
        return Case(
            "raw-http/unknown-model", "no_such_model", "raw-http", INVALID, body=json.dumps(good).encode()
        )
    return Case(f"raw-http/{choice}", EMBEDDING, "raw-http", expect, body=body, headers=headers)


def malformed_cases(
    seed: int, count: int, media: Media, raw_share: float = 0.05, heavy_share: float = 0.0
) -> Iterator[Case]:
    """`count` malformed cases, the same for the same arguments: generators in turn, parameters and
    transport drawn from the seed; a `heavy_share` of them may cost a full max_length forward."""
    rng = random.Random(seed)
    names = list(GENERATORS)
    for index in range(count):
        if rng.random() < raw_share:
            yield raw_http(rng, media)
            continue
        name = names[index % len(names)]
        heavy = rng.random() < heavy_share
        model, expect, tensors = GENERATORS[name](rng, media, heavy)
        transport = rng.choice(["http", "grpc"])
        yield Case(name + ("/heavy" if heavy else ""), model, transport, expect, tensors)


def same_answer(expected: Outcome, got: Outcome, tolerance: float = 1e-6) -> str | None:
    """Why `got` differs from the good request's answer alone, or None."""
    if got.kind != ANSWERED_OK:
        return f"{got.kind}: {got.status} {got.message[:200]}"
    for name, array in expected.outputs.items():
        other = got.outputs.get(name)
        if other is None or other.shape != array.shape:
            return f"{name}: shape {None if other is None else other.shape} != {array.shape}"
        difference = float(np.abs(other.astype(np.float64) - array.astype(np.float64)).max(initial=0.0))
        if difference > tolerance:
            return f"{name}: differs by {difference:.3g}"
    return None
