"""Giving the memory of decoded media back to the operating system (glibc only; a no-op elsewhere).

Decoded frames, float planes and patches are tens to hundreds of MB each. glibc serves allocations under its
mmap threshold from heaps it keeps, and raises that threshold (up to 32 MB) every time a larger mmapped
block is freed, so after a few large images and videos most buffers come from heaps that stay at their
largest: measured, a preprocess process kept +67 MB (of 75 MB warm) after 30 large or malformed items.
`malloc_trim(0)` gives every free page of every heap (FFmpeg's decoder threads have their own) back at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import threading

# RSS growth since the last trim from which a trim pays. Trimming after every small image would double its
# CPU time (2.0 -> 4.5 ms per 448x448 JPEG: the next one faults the pages back in); a large image or video
# leaves tens to hundreds of MB. (malloc's own count of free bytes cannot decide: it keeps counting the pages
# a trim has already given back.)
TRIM_FROM_GROWTH_BYTES = 16 * 1024 * 1024
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
# The second trim's delay: a preprocess response is sent within milliseconds of its last prepare.
LATER_SECONDS = 0.5


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):  # not glibc: musl has no malloc_trim
        return None
    return libc


def resident_bytes() -> int:
    """This process's RSS (Linux)."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * PAGE_BYTES


class _Trimmer:
    """Trims when the RSS has grown by `from_growth` since the last trim (the first call always trims), and
    once more `LATER_SECONDS` after, from a timer thread: by then the request's inputs and outputs, alive
    during the first trim, are freed too (malloc_trim is thread-safe)."""

    def __init__(self) -> None:
        self.after_last_trim: int | None = None
        self.lock = threading.Lock()
        self.pending: threading.Timer | None = None

    def __call__(self, from_growth: int = TRIM_FROM_GROWTH_BYTES) -> bool:
        if _glibc() is None:
            return False
        if (
            from_growth > 0
            and self.after_last_trim is not None
            and resident_bytes() - self.after_last_trim < from_growth
        ):
            return False
        self._trim()
        with self.lock:
            if self.pending is None:
                self.pending = threading.Timer(LATER_SECONDS, self._later)
                self.pending.daemon = True
                self.pending.start()
        return True

    def _trim(self) -> None:
        libc = _glibc()
        if libc is not None:  # always so: __call__ returns before any trim without glibc
            libc.malloc_trim(0)
        self.after_last_trim = resident_bytes()

    def _later(self) -> None:
        with self.lock:
            self.pending = None
        self._trim()


# Return the free pages of every malloc heap to the operating system if the RSS grew enough since the last
# time (from_growth=0: now); True if it trimmed.
release_freed_memory = _Trimmer()


# mallopt's parameter number for the mmap threshold (glibc's malloc.h).
M_MMAP_THRESHOLD = -3
# The model step's blocks from this size up are mmapped and unmapped when freed (fix_mmap_threshold).
MODEL_STEP_MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
# A deployment that sets the threshold itself keeps its own.
THRESHOLD_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold")
# mallopt's parameter number for the trim threshold. Setting the mmap threshold freezes the trim threshold at
# glibc's 128 KiB default too (glibc grows it with the mmap threshold only while that slides), and the heap's
# top was then given back and faulted in again all the time: a fixed 32 MiB mmap threshold made the first
# published commit's text rate 264 -> 215 req/s (perf/results/cpu-x86_64-2c/2026-12-07/ab-quiet*). So it is
# set where glibc's own sliding would take it (twice the largest mmap threshold): the heaps hold at most this
# much free at their top.
M_TRIM_THRESHOLD = -1
MODEL_STEP_TRIM_THRESHOLD_BYTES = 64 * 1024 * 1024
TRIM_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold")


def fix_mmap_threshold(threshold: int = MODEL_STEP_MMAP_THRESHOLD_BYTES) -> bool:
    """Serve every block of `threshold` bytes or more with its own mmap, for good; True if set.

    The model step's tensors change size with every micro-batch (rows x length, images of any size). With
    glibc's sliding threshold the heaps' free space fragmented and the RSS grew in steps; at first the
    threshold was fixed at 256 KiB, so that every activation went back to the system when freed, at the price
    of a page fault per page of every activation at every forward. Once oneDNN's per-shape kernels, what
    really grew, were gone (backend.runtime.platforms), the heaps' share reaches a ceiling, so the threshold
    is fixed where glibc's sliding ends (32 MiB) and the trim threshold at twice that, as glibc's sliding
    would set it: the RSS over 20,000 mixed requests +5.0 % from 1k to 20k and +0.4 % in the last quarter,
    and text and images run 1.1-1.5x the rate of the 256 KiB threshold (docs/sizing.md). A deployment that
    prefers another trade sets its own threshold."""
    if _set_by_deployment(THRESHOLD_SETTINGS):
        return False
    libc = _glibc()
    if libc is None or libc.mallopt(M_MMAP_THRESHOLD, threshold) != 1:
        return False
    if not _set_by_deployment(TRIM_SETTINGS):
        libc.mallopt(M_TRIM_THRESHOLD, MODEL_STEP_TRIM_THRESHOLD_BYTES)
    return True


def _set_by_deployment(settings: tuple[str, str]) -> bool:
    """Whether the environment sets this malloc parameter (its MALLOC_*_ variable or glibc tunable)."""
    return settings[0] in os.environ or settings[1] in os.environ.get("GLIBC_TUNABLES", "")
