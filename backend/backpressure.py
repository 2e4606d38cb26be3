"""The model step's queue bound, kept by the preprocess steps of its ensemble: overload is refused at the
door, before any preprocessing, instead of queued in front of the model.

Triton's queue policy cannot bound the model step's queue: with one, Triton 2.51's dynamic batcher stops
prefetching and, whenever it finds the instance busy, sleeps until a new request arrives or 500 ms pass,
even after the instance has freed (measured: 1 request in 10 waited ~500 ms at 4-8 in flight; README
"Overload"). So the steps keep the bound themselves:

- the preprocess step stamps each request it hands on (QUEUED_AT, time.monotonic_ns(): one clock for every
  process of the host) and remembers the stamps;
- the model step publishes the newest stamp it has taken (Triton's queue is first come, first served, so
  every request stamped later still waits);
- a preprocess instance with `limit` of its requests still waiting refuses new ones at once with
  UNAVAILABLE, and the model step refuses a request that waited longer than its queue_timeout_seconds.

The channel is a file of 8 bytes, one per ensemble and tritonserver: both steps' stubs are children of the
same tritonserver process, whose pid names the file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from backend.errors import UnavailableError

_WIDTH = 8
# Stamps older than this are forgotten: their request was refused by the model step's queue timeout (10 s
# by default) or never reached it (a client calling the preprocess step alone).
FORGET_SECONDS = 30.0


def channel_path(model_name: str, server_pid: int | None = None) -> Path:
    """The file shared by an ensemble's steps (`<ensemble>_preprocess`, `<ensemble>_model`) in one server."""
    ensemble = model_name.removesuffix("_preprocess").removesuffix("_model")
    pid = os.getppid() if server_pid is None else server_pid
    return Path(tempfile.gettempdir()) / f"qwen3vl-backpressure-{pid}-{ensemble}"


def channel_files(server_pid: int) -> list[Path]:
    """Every channel of one tritonserver: the model steps remove theirs at unload, the launcher what a
    killed server left."""
    return sorted(channel_path("*", server_pid).parent.glob(channel_path("*", server_pid).name))


class Publisher:
    """The model step's side: `taken(stamp)` after it has taken requests stamped up to `stamp`."""

    def __init__(self, path: Path, clock: Callable[[], int] = time.monotonic_ns):
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._newest = 0
        # Live from now, having taken nothing: a cold server's first burst is bounded too (and a stale file
        # of a dead server with the same pid is overwritten).
        self.taken(clock())

    def taken(self, stamp: int) -> None:
        if stamp > self._newest:
            self._newest = stamp
            os.pwrite(self._fd, stamp.to_bytes(_WIDTH, "little"), 0)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.close(self._fd)


class QueueGate:
    """The preprocess instance's side: at most `limit` of the requests it handed on wait for the model step.
    The file may appear, vanish and be replaced (the model step loads, unloads or is reloaded) at any time;
    while it does not exist or says nothing, nothing is refused."""

    def __init__(self, path: Path, limit: int, clock: Callable[[], int] = time.monotonic_ns):
        self.path = path
        self.limit = limit
        self.clock = clock
        self._stamps: deque[int] = deque()  # of the requests handed on and not yet taken, oldest first
        self._fd: int | None = None

    def admit(self, wanted: int) -> int:
        """How many of `wanted` new requests may be preprocessed; the rest are to be refused."""
        taken = self._read()
        if taken == 0:
            self._stamps.clear()
            return wanted
        forget = self.clock() - int(FORGET_SECONDS * 1e9)
        while self._stamps and (self._stamps[0] <= taken or self._stamps[0] < forget):
            self._stamps.popleft()
        return max(0, min(wanted, self.limit - len(self._stamps)))

    def handed_on(self, stamp: int) -> None:
        self._stamps.append(stamp)

    def refusal(self) -> UnavailableError:
        return UnavailableError(
            f"the model step is overloaded ({self.limit} requests from this preprocess instance wait for "
            "it); retry later"
        )

    def _read(self) -> int:
        try:
            if self._fd is not None and os.fstat(self._fd).st_nlink == 0:
                os.close(self._fd)
                self._fd = None
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
            data = os.pread(self._fd, _WIDTH, 0)
        except OSError:
            return 0
        return int.from_bytes(data, "little") if len(data) == _WIDTH else 0

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
