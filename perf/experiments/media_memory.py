"""Peak and retained memory of the media preprocessing: ``python -m perf.experiments.media_memory --out DIR``.

Each case runs in a fresh interpreter that imports the preprocess code, warms it on a small video and
image, resets its peak RSS (/proc/self/clear_refs), prepares the case's media with `MediaPreparer` (the
code both preprocess steps run) and reports peak RSS above the warmed-up RSS (VmHWM - VmRSS before) and
the RSS it keeps afterwards. The burst case prepares 30 large or malformed items and reports RSS after
them, as a preprocess process would hold it between requests. Media are synthetic (tools.synthetic),
made once and cached outside the repository (--cache).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from perf.lib.console import add_out_argument, command_parser
from perf.lib.paths import REPO
from perf.lib.record import Experiment

CASES = ("video_720p_64", "video_1080p_64", "h264_raw_long", "png_64mp", "burst_30")


def media(cache: Path) -> dict[str, Path]:
    """The test media, made once: 720p and 1080p 64-frame MP4 (64 s at 1 fps), a long raw H.264 stream,
    a 64 MP PNG."""
    import av
    import numpy as np
    from PIL import Image

    from tools import synthetic

    cache.mkdir(parents=True, exist_ok=True)
    paths = {
        "video_720p_64": cache / "video_720p_64.mp4",
        "video_1080p_64": cache / "video_1080p_64.mp4",
        "h264_raw_long": cache / "long.h264",
        "png_64mp": cache / "png_64mp.png",
        "small_video": cache / "small.mp4",
    }
    if not paths["video_720p_64"].exists():
        paths["video_720p_64"].write_bytes(synthetic.video(seconds=64, fps=1, width=1280, height=720))
    if not paths["video_1080p_64"].exists():
        paths["video_1080p_64"].write_bytes(synthetic.video(seconds=64, fps=1, width=1920, height=1080))
    if not paths["small_video"].exists():
        paths["small_video"].write_bytes(synthetic.video(seconds=2, fps=8, width=96, height=64))
    if not paths["h264_raw_long"].exists():
        # 20 minutes at 25 fps of a small moving picture, as a bare Annex-B stream (no container duration).
        frames = synthetic.video_frames(50, 320, 240)
        with av.open(str(paths["h264_raw_long"]), mode="w", format="h264") as container:
            stream = container.add_stream("libx264", rate=25)
            stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
            stream.options = {"preset": "ultrafast"}
            for index in range(25 * 60 * 20):
                frame = av.VideoFrame.from_ndarray(frames[index % 50], format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    if not paths["png_64mp"].exists():
        rng = np.random.default_rng(0)
        tile = rng.integers(0, 256, size=(500, 500, 3), dtype=np.uint8)
        Image.fromarray(np.tile(tile, (16, 16, 1))).save(paths["png_64mp"], compress_level=1)
    return paths


def status(field: str) -> int:
    """A /proc/self/status figure in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    raise KeyError(field)


def child(case: str, cache: Path, max_tokens: int | None) -> dict:
    from backend.errors import InputError
    from backend.media.preparer import MediaPreparer
    from backend.settings import VisionSettings
    from tools import synthetic

    if os.environ.get("MEDIA_TRIM") == "off":  # for comparison: the preparer without its malloc_trim
        import backend.media.preparer

        setattr(backend.media.preparer, "release_freed_memory", lambda: False)  # noqa: B010 (a swap for the run)
    paths = media(cache)
    timings = {"image": 0.0, "video": 0.0}
    budget = {} if max_tokens is None else {"max_tokens": max_tokens}
    preparer = MediaPreparer(VisionSettings(), timings, **budget)
    small_image = synthetic.encode_image(synthetic.photo(448, 448))
    for _ in range(3):  # warm: FFmpeg, PIL plugins, numpy buffers
        preparer.prepare((small_image,), (paths["small_video"].read_bytes(),))
    # The inputs are read before the warm figure, so that it counts them: what is kept is the code's.
    data: bytes | None
    if case == "burst_30":
        blobs = [paths[name].read_bytes() for name in ("video_720p_64", "video_1080p_64", "png_64mp")]
        # A server is warm once it has seen large media too: one of each, so one-time set-up is not counted.
        for data in blobs:
            try:
                if data[:4] == b"\x89PNG":
                    preparer.prepare((data,), ())
                else:
                    preparer.prepare((), (data,))
            except InputError:  # over the token budget: refused early
                pass
        data = None
    else:
        data = paths[case].read_bytes()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    warm = status("VmRSS")
    outcome = "ok"
    started, cpu_started = time.perf_counter(), time.process_time()
    if case == "burst_30":
        for index in range(30):
            data = blobs[index % 3]
            if index % 2:
                data = data[: len(data) // 2] + bytes(4096) + data[len(data) // 2 :]  # a malformed copy
            try:
                if data[:4] == b"\x89PNG":
                    preparer.prepare((data,), ())
                else:
                    preparer.prepare((), (data,))
            except InputError:
                pass
            data = None  # a malformed copy is the test's, not the code's
    else:
        assert data is not None  # read above for every case but the burst
        try:
            if case.startswith("png"):
                prepared = preparer.prepare((data,), ())
            else:
                prepared = preparer.prepare((), (data,))
            outcome = f"ok, {sum(p.token_count for p in prepared.images + prepared.video_patches)} tokens"
            del prepared
        except InputError as error:
            outcome = f"InputError: {error}"
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    time.sleep(2.0)  # the preparer trims once more 0.5 s after a large item
    return {
        "case": case,
        "max_tokens": max_tokens,
        "outcome": outcome,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "warm_rss_mib": warm,
        "peak_above_warm_mib": status("VmHWM") - warm,
        "rss_after_mib": status("VmRSS"),
        "kept_above_warm_mib": status("VmRSS") - warm,
    }


def main() -> None:
    parser = command_parser("perf.experiments.media_memory", __doc__)
    add_out_argument(parser, required=True)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "qwen3vl-media-memory")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--max-tokens", default="none,8192", help="token budgets to run each case with")
    parser.add_argument("--trim", default="on,off", help="burst_30 with the preparer's malloc_trim on / off")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        budget = None if args.max_tokens == "none" else int(args.max_tokens)
        print(json.dumps(child(args.child, args.cache, budget)))
        return
    media(args.cache)
    experiment = Experiment("perf.experiments.media_memory", None, args.out)
    rows = []
    for case in args.cases.split(","):
        for budget in args.max_tokens.split(","):
            for trim in args.trim.split(",") if case == "burst_30" else ["on"]:
                command = [sys.executable, "-m", "perf.experiments.media_memory", "--out", str(args.out)]
                command += ["--cache", str(args.cache), "--child", case, "--max-tokens", budget]
                environment = {**os.environ, "MEDIA_TRIM": trim}
                result = subprocess.run(
                    command, cwd=REPO, capture_output=True, text=True, check=True, env=environment
                )
                rows.append({**json.loads(result.stdout.strip().splitlines()[-1]), "trim": trim})
                print(json.dumps(rows[-1]), flush=True)
    report = experiment.report(rows=rows)
    experiment.write_json("media_memory.json", report)
    lines = [
        *experiment.heading("Media preprocessing memory", report),
        "| case | max_tokens | trim | outcome | s | CPU s | warm MiB | peak above warm | kept above warm |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        outcome = row["outcome"] if len(row["outcome"]) < 60 else row["outcome"][:57] + "..."
        lines.append(
            f"| {row['case']} | {row['max_tokens']} | {row['trim']} | {outcome} | {row['seconds']} "
            f"| {row['cpu_seconds']} | {row['warm_rss_mib']} | {row['peak_above_warm_mib']} "
            f"| {row['kept_above_warm_mib']} |"
        )
    experiment.write_markdown("media_memory.md", lines)


if __name__ == "__main__":
    main()
