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
  UNAVAILABLE, and the model step refuses a request that waited longer than its queue_timeout_seconds;
- the model step also publishes since when it has been out of execute(): Triton hands a free instance
  what waits at once, so a request that could have been handed to it IDLE_SECONDS ago is not waiting for
  it (it went elsewhere: a client calling the preprocess step alone, whose requests would otherwise block
  the ensemble while the model step is idle).

The channel is a file of 16 bytes (the newest stamp taken, then the start of the free spell or 0 inside
execute()), one per ensemble and tritonserver: both steps' stubs are children of the same tritonserver
process, whose pid names the file.
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
_FREE_AT = _WIDTH  # offset of the free spell's start
# Longer than any gap between two execute()s under load: at 4x overload on 2 shared cores a 50 ms allowance
# forgot requests that were waiting (the model step's queue grew from 2.4 s to 5.5 s).
IDLE_SECONDS = 1.0
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
    pattern = channel_path("*", server_pid)
    return sorted(pattern.parent.glob(pattern.name))


class Publisher:
    """The model step's side: `busy()` when execute() starts, `taken(stamp)` once it has taken requests
    stamped up to `stamp`, `free()` when it returns."""

    def __init__(self, path: Path, clock: Callable[[], int] = time.monotonic_ns):
        self.path = path
        self.clock = clock
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._newest = 0
        # Live from now, having taken nothing: a cold server's first burst is bounded too (and a stale file
        # of a dead server with the same pid is overwritten).
        self.taken(clock())
        self.free()

    def taken(self, stamp: int) -> None:
        if stamp > self._newest:
            self._newest = stamp
            os.pwrite(self._fd, stamp.to_bytes(_WIDTH, "little"), 0)

    def busy(self) -> None:
        os.pwrite(self._fd, (0).to_bytes(_WIDTH, "little"), _FREE_AT)

    def free(self) -> None:
        os.pwrite(self._fd, self.clock().to_bytes(_WIDTH, "little"), _FREE_AT)

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
        taken, free_since = self._read()
        if taken == 0:
            self._stamps.clear()
            return wanted
        now = self.clock()
        idle = int(IDLE_SECONDS * 1e9)
        forget = now - int(FORGET_SECONDS * 1e9)

        def gone(stamp: int) -> bool:
            # Taken, too old to matter, or handed on while the model step was free and not taken since.
            return (
                stamp <= taken or stamp < forget or (free_since != 0 and now - max(stamp, free_since) > idle)
            )

        while self._stamps and gone(self._stamps[0]):
            self._stamps.popleft()
        return max(0, min(wanted, self.limit - len(self._stamps)))

    def handed_on(self, stamp: int) -> None:
        self._stamps.append(stamp)

    def refusal(self) -> UnavailableError:
        return UnavailableError(
            f"the model step is overloaded ({self.limit} requests from this preprocess instance wait for "
            "it); retry later"
        )

    def _read(self) -> tuple[int, int]:
        """(newest stamp taken, start of the model step's free spell or 0); (0, 0) without a model step."""
        try:
            if self._fd is not None and os.fstat(self._fd).st_nlink == 0:
                os.close(self._fd)
                self._fd = None
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
            data = os.pread(self._fd, 2 * _WIDTH, 0)
        except OSError:
            return 0, 0
        if len(data) != 2 * _WIDTH:
            return 0, 0
        return int.from_bytes(data[:_WIDTH], "little"), int.from_bytes(data[_WIDTH:], "little")

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
