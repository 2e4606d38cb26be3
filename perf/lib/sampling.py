"""What a process group uses, read from /proc (no extra tools): resident memory and CPU seconds, once or
sampled in a thread for the peak; the percentiles the drills report, the ratios and spread of interleaved
comparisons."""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np

TICKS = os.sysconf("SC_CLK_TCK")


def proc_stats() -> Iterator[tuple[Path, list[str]]]:
    """(/proc/<pid>, the fields of its stat after the command name) of every live process; the field
    numbers below are stat(5)'s minus 3."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            yield stat.parent, stat.read_text().rpartition(")")[2].split()


def group_members(pgid: int) -> Iterator[tuple[Path, list[str]]]:
    for proc, fields in proc_stats():
        with contextlib.suppress(ValueError, IndexError):
            if int(fields[2]) == pgid:
                yield proc, fields


def cpu_seconds_of(fields: list[str]) -> float:
    """User + system CPU seconds of one process's stat fields."""
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_kib(proc: Path) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in (proc / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def rss_mib(pid: int) -> float:
    return round(rss_kib(Path(f"/proc/{pid}")) / 1024.0, 1)


def group_rss_mib(pgid: int) -> float:
    return sum(rss_kib(proc) for proc, _ in group_members(pgid)) / 1024.0


def group_cpu_seconds(pgid: int) -> float:
    return sum(cpu_seconds_of(fields) for _, fields in group_members(pgid))


def own_cpu_seconds() -> tuple[float, float]:
    """(this process, its finished children) in CPU seconds."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, children.ru_utime + children.ru_stime


def percentiles(values: list[float]) -> dict[str, float]:
    """p50 / p90 / p99 / max in milliseconds of latencies in seconds."""
    if not values:
        return {}
    array = np.asarray(values) * 1000.0
    return {
        name: round(float(np.percentile(array, q)), 2) for name, q in (("p50", 50), ("p90", 90), ("p99", 99))
    } | {"max": round(float(array.max()), 2)}


class RssSampler:
    """Peak RSS (MiB) of process groups, sampled every `every_s` in a thread while the block runs;
    `sample()` is the hook a subclass extends to read more at the same times."""

    def __init__(self, *pgids: int, every_s: float = 0.2) -> None:
        self.pgids = pgids
        self.every_s = every_s
        self.start: list[float] = [0.0] * len(pgids)
        self.peaks: list[float] = [0.0] * len(pgids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def peak(self) -> float:
        """The first group's peak."""
        return self.peaks[0]

    def rss(self) -> list[float]:
        return [round(group_rss_mib(pgid), 1) for pgid in self.pgids]

    def sample(self) -> None:
        self.peaks = [max(peak, now) for peak, now in zip(self.peaks, self.rss())]

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            with contextlib.suppress(OSError):
                self.sample()

    def __enter__(self) -> Self:
        self.start = self.peaks = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def ratio_spread(denominators: Sequence[float], numerators: Sequence[float]) -> dict[str, Any]:
    """Pairwise ratios numerator ÷ denominator (pairs where either is 0, a failed run, are left out) and their
    median, min and max (None when no pair is left): the figure and spread of an interleaved comparison."""
    ratios = [n / d for d, n in zip(denominators, numerators) if d > 0 and n > 0]
    if not ratios:
        return {"ratios": [], "ratio_median": None, "ratio_min": None, "ratio_max": None}
    return {
        "ratios": [round(x, 4) for x in ratios],
        "ratio_median": round(statistics.median(ratios), 4),
        "ratio_min": round(min(ratios), 4),
        "ratio_max": round(max(ratios), 4),
    }
