"""Seeded mutations of real media (bit flips, truncations, splices of headers) through `MediaPreparer`:
whatever a client sends as IMAGE or VIDEO, the only error that may escape is InputError (INVALID_ARG)."""

import random
import time

import pytest

from backend.errors import InputError
from backend.media.preparer import MediaPreparer
from backend.settings import VisionSettings
from tools import synthetic

SEED = 11  # its 300 cases include an mp4 whose stream has no decoder (INTERNAL before the fix)
CASES_PER_KIND = 60


def originals() -> dict[str, bytes]:
    photo = synthetic.photo(96, 64)
    return {
        "mp4": synthetic.video(seconds=2, fps=4, width=96, height=64, kind="mp4"),
        "webm": synthetic.video(seconds=2, fps=4, width=96, height=64, kind="webm"),
        "gif": synthetic.video(seconds=2, fps=4, width=96, height=64, kind="gif"),
        "png": synthetic.encode_image(photo, "PNG"),
        "jpeg": synthetic.encode_image(photo, "JPEG", quality=80),
    }


def mutate(data: bytes, others: list[bytes], rng: random.Random) -> bytes:
    """One of: flipped bits, a truncation, a run of overwritten bytes, a header spliced from another
    format, a repeated chunk; mostly near the start, where the headers are."""
    blob = bytearray(data)
    kind = rng.randrange(5)
    near_header = min(len(blob), rng.choice((64, 512, len(blob))))
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            blob[rng.randrange(near_header)] ^= 1 << rng.randrange(8)
    elif kind == 1:
        return bytes(blob[: rng.randrange(1, len(blob))])
    elif kind == 2:
        start = rng.randrange(near_header)
        run = rng.randint(1, 16)
        blob[start : start + run] = bytes(rng.choice((0x00, 0xFF, rng.randrange(256))) for _ in range(run))
    elif kind == 3:
        other = rng.choice(others)
        cut = rng.randint(1, min(len(other), 256))
        blob[:cut] = other[:cut]
    else:
        start = rng.randrange(len(blob))
        chunk = blob[start : start + rng.randint(1, 4096)]
        blob[start:start] = chunk * rng.randint(1, 4)
    return bytes(blob)


def cases(count_per_kind: int, seed: int) -> list[tuple[str, int, bytes]]:
    rng = random.Random(seed)
    media = originals()
    found = []
    for kind, data in media.items():
        others = [other for name, other in media.items() if name != kind]
        found.extend((kind, number, mutate(data, others, rng)) for number in range(count_per_kind))
    return found


def prepare(preparer: MediaPreparer, kind: str, data: bytes) -> str:
    """'ok' or the InputError's message; anything else propagates."""
    try:
        if kind in ("png", "jpeg"):
            preparer.prepare((data,), ())
        else:
            preparer.prepare((), (data,))
    except InputError as error:
        return str(error)
    return "ok"


def test_mutated_media_give_only_input_errors():
    preparer = MediaPreparer(VisionSettings(), {"image": 0.0, "video": 0.0}, max_tokens=8192)
    started = time.perf_counter()
    outcomes = {"ok": 0, "InputError": 0}
    for kind, number, data in cases(CASES_PER_KIND, SEED):
        try:
            outcome = prepare(preparer, kind, data)
        except Exception as error:  # noqa: BLE001 - the failure names the case that escaped
            pytest.fail(f"{kind} mutation {number} (seed {SEED}) raised {type(error).__name__}: {error}")
        outcomes["ok" if outcome == "ok" else "InputError"] += 1
    # Both outcomes occur: the mutations neither all break the media nor all leave them intact.
    assert outcomes["ok"] > 0 and outcomes["InputError"] > 0, outcomes
    assert time.perf_counter() - started < 120  # a hang would show here long before the suite's timeout
