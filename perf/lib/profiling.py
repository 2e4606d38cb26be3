"""py-spy profiles of the server's Python stubs while perf_analyzer runs: where their time goes.

py-spy skips idle threads, but time a stub spends blocked inside a native call (waiting for the server's
answer to a metric update, say) is not idle to it: the samples say where a stub's wall time goes when it is
not waiting for work, not how much CPU it used (perf/lib/server_stats.py reads that from /proc).
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

RATE = 67  # samples per second (odd, so it does not beat with periodic work)

# Stack substring -> what that time is; the first match wins, so specific parts come first.
CATEGORIES = (
    ("torch.compile / inductor", ("torch/_dynamo", "torch/_inductor")),
    ("vision tower", ("Qwen3VLVisionModel", "modeling_qwen3_vl.py:get_image_features", "get_video_features")),
    ("rotary positions (MRoPE index, cos/sin)", ("get_rope_index", "RotaryEmbedding.forward")),
    ("backbone forward (torch)", ("modeling_qwen3_vl", "torch/nn/modules")),
    ("collate / pad", ("modeling.py:collate", "collate (backend/modeling.py")),
    ("pool / normalise / numpy out", ("matryoshka", "row_outputs", "last_token_pool")),
    ("micro-batch plan", ("plan_micro_batches",)),
    ("unpack request tensors", ("unpack_rows", "read_inputs", "get_input_tensor_by_name")),
    ("build responses", ("to_response", "embedding_output", "pack_rows", "InferenceResponse")),
    ("tokenise", ("tokenization", "tokenizers", "tokenization_utils")),
    ("chat prompt", ("chat.py",)),
    ("image decode / resize / patches", ("vision.py", "PIL/")),
    ("video decode / sample", ("video.py", "av/")),
    ("metrics", ("metrics.py",)),
)


def available() -> str | None:
    candidate = Path(sys.prefix) / "bin" / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


def stub_pids(server_pid: int, model_name: str) -> list[int]:
    """Backend stub processes of one model; the server leads its own process group (start_new_session)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError):
            if os.getpgid(int(proc.name)) != server_pid:
                continue
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "triton_python_backend_stub" in cmdline and f"/{model_name}/" in cmdline:
                pids.append(int(proc.name))
    return sorted(pids)


class Profiler:
    """`with Profiler(pids, out_dir, name):` records each pid with py-spy until the block ends."""

    def __init__(self, pids: list[int], out_dir: Path, name: str):
        self.pids, self.out_dir, self.name = pids, Path(out_dir), name
        self.processes: list[tuple[int, Path, subprocess.Popen]] = []
        self.started = 0.0
        self.seconds = 0.0

    def __enter__(self) -> Profiler:
        binary = available()
        if binary is None:
            return self
        self.started = time.monotonic()
        for pid in self.pids:
            out = self.out_dir / f"{self.name}-pid{pid}.txt"
            command = [
                binary,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(RATE),
                "--format",
                "raw",
                "--output",
                str(out),
                "--nonblocking",
            ]
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.processes.append((pid, out, process))
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.monotonic() - self.started
        for _, _, process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
        for _, _, process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def summaries(self) -> list[dict]:
        return [summarize(out, self.seconds, pid) for pid, out, _ in self.processes if out.exists()]


def collapsed_stacks(path: Path) -> Iterator[tuple[str, int]]:
    """(`frame;frame;...` from the root to the leaf, samples) of each line of a py-spy raw profile."""
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            yield stack, int(count_text)


def summarize(path: Path, seconds: float, pid: int = 0, top: int = 6) -> dict:
    """Samples by category and the hottest leaf functions of one raw profile."""
    categories: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for stack, count in collapsed_stacks(path):
        total += count
        for label, needles in CATEGORIES:
            if any(needle in stack for needle in needles):
                categories[label] += count
                break
        else:
            categories["other"] += count
        leaves[_short(stack.split(";")[-1])] += count
    return {
        "pid": pid,
        "seconds": round(seconds, 1),
        "samples": total,
        "categories": {label: count / total for label, count in categories.most_common()} if total else {},
        "top_leaves": [(name, count / total) for name, count in leaves.most_common(top)] if total else [],
    }


def merge(summaries: list[dict], top: int = 6) -> dict:
    """One breakdown for several processes of the same model (instances), weighted by their samples."""
    total = sum(entry["samples"] for entry in summaries)
    categories: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    for entry in summaries:
        for label, share in entry["categories"].items():
            categories[label] += share * entry["samples"]
        for name, share in entry["top_leaves"]:
            leaves[name] += share * entry["samples"]
    return {
        "processes": len(summaries),
        "samples": total,
        "categories": {label: count / total for label, count in categories.most_common()} if total else {},
        "top_leaves": [(name, count / total) for name, count in leaves.most_common(top)] if total else [],
    }


def _short(frame: str) -> str:
    """`forward (transformers/models/.../modeling_qwen3_vl.py:123)` -> `forward (modeling_qwen3_vl.py)`."""
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return f"{name} ({file})" if file else name
