"""The machine a run is taken on (CPU or accelerator name, host tag, commit, what else was busy) and the
dated directory its results go to."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from perf.lib.paths import REPO, RESULTS


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def host_tag(device: str = "cpu") -> str:
    """A short name for the machine class results were taken on, e.g. `cpu-x86_64-2c`, `cuda-h100-80gb`.
    PERF_HOST_TAG overrides it."""
    if os.environ.get("PERF_HOST_TAG"):
        return os.environ["PERF_HOST_TAG"]
    kind = device.split(":")[0]
    if kind == "cpu":
        return f"cpu-{platform.machine()}-{os.cpu_count()}c"
    name = accelerator_name(device)
    return f"{kind}-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}"


def accelerator_name(device: str) -> str:
    """The device's name as its platform object gives it (backend.runtime.platforms), else its kind."""
    from backend.runtime.platforms import resolve_platform

    try:
        return resolve_platform(device).name()
    except Exception:
        return device.split(":")[0]


def new_run_dir(tag: str, base: Path = RESULTS, run_dir: Path | None = None) -> Path:
    """`<base>/<tag>/<YYYY-MM-DD>/`; a later run the same day gets `<date>_<HHMMSS>` instead of mixing in."""
    if run_dir is None:
        now = datetime.datetime.now()
        run_dir = base / tag / now.strftime("%Y-%m-%d")
        if (run_dir / "summary.md").exists() or (run_dir / "points.json").exists():
            run_dir = base / tag / now.strftime("%Y-%m-%d_%H%M%S")
    for sub in ("", "csv", "raw"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    return run_dir


def todays_results_dir(tag: str | None = None) -> Path:
    """Today's results directory for this host, shared by the benchmarks of the day."""
    return RESULTS / (tag or host_tag()) / datetime.date.today().isoformat()


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=False, default=str) + "\n")


def git_commit() -> str | None:
    """The checked-out commit: git's answer, else read from .git (a machine without git)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        if done.returncode == 0:
            return done.stdout.strip()
    head = REPO / ".git" / "HEAD"
    with contextlib.suppress(OSError):
        text = head.read_text().strip()
        if not text.startswith("ref: "):
            return text[:12]
        ref = text[5:]
        ref_file = REPO / ".git" / ref
        if ref_file.exists():
            return ref_file.read_text().strip()[:12]
        packed = REPO / ".git" / "packed-refs"
        for line in packed.read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0][:12]
    return None


def busy_processes() -> list[str]:
    """Other CPU-hungry processes right now (what else was running), from /proc, no extra tools."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = []
    me = os.getpid()
    samples: dict[int, tuple[str, int]] = {}
    for when in (0, 1):
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int(stat.parent.name)
                raw = stat.read_text()
                name = raw[raw.index("(") + 1 : raw.rindex(")")]
                fields = raw.rpartition(")")[2].split()
                used = int(fields[11]) + int(fields[12])
                if when == 0:
                    samples[pid] = (name, used)
                elif pid in samples and pid != me:
                    share = (used - samples[pid][1]) / ticks
                    if share >= 0.2:
                        found.append(f"{name} (pid {pid}, {share:.0%} of a core)")
        if when == 0:
            time.sleep(1.0)
    return found
