"""The model step's queue bound, kept by the preprocess steps of its ensemble: overload is refused at the
door, before any preprocessing, instead of queued in front of the model.

Triton's queue policy cannot bound the model step's queue: with one, Triton 2.51's dynamic batcher stops
prefetching and, whenever it finds the instance busy, sleeps until a new request arrives or 500 ms pass,
even after the instance has freed (measured: 1 request in 10 waited ~500 ms at 4-8 in flight; README
"Overload"). So the steps keep the bound themselves:

- the preprocess step stamps each request it hands on (QUEUED_AT, time.monotonic_ns(): one clock for every
  process of the host) and remembers the stamps (QueueGate);
- the model step publishes the newest stamp it has taken (QueueBound, through a Publisher: Triton's queue
  is first come, first served, so every request stamped later still waits);
- a preprocess instance with `limit` of its requests still waiting refuses new ones at once with
  UNAVAILABLE (QueueGate), and the model step refuses a request that waited longer than its
  queue_timeout_seconds (QueueBound);
- the model step also publishes since when it has been out of execute(): Triton hands a free instance
  what waits at once, so a request that could have been handed to it IDLE_SECONDS ago is not waiting for
  it (it went elsewhere: a client calling the preprocess step alone, whose requests would otherwise block
  the ensemble while the model step is idle).

Counting requests bounds memory, not time: 256 long texts are minutes of work. So the model step also
publishes its measured service rate (backend.admission.ServiceRate, tokens per second), the tokens queued
inside it, and its wait budget (queue_timeout_seconds x expected_wait_share); a preprocess instance, before
it tokenises a request, refuses it when the tokens queued ahead of it (its own requests still waiting, times
the preprocess instances, plus the model step's backlog) would take longer than the budget at that rate
(QueueGate.wait_refusal). Nothing is refused before a rate is measured.

The channel is a file of 40 bytes (the newest stamp taken, then the start of the free spell or 0 inside
execute(); then the service rate in tokens/s, the tokens queued inside the model step, the wait budget in
seconds), one per ensemble and tritonserver: both steps' stubs are children of the same tritonserver
process, whose pid names the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from backend.admission import over_budget
from backend.errors import UnavailableError
from backend.protocol import QUEUED_AT, Tensors

logger = logging.getLogger(__name__)

_WIDTH = 8
_FREE_AT = _WIDTH  # offset of the free spell's start
_SERVICE_AT = 2 * _WIDTH  # offset of (rate tokens/s float64, backlog tokens int64, budget seconds float64)
_SERVICE = struct.Struct("<dqd")
_SIZE = _SERVICE_AT + _SERVICE.size
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
        self.service(None, 0, 0.0)

    def taken(self, stamp: int) -> None:
        if stamp > self._newest:
            self._newest = stamp
            os.pwrite(self._fd, stamp.to_bytes(_WIDTH, "little"), 0)

    def busy(self) -> None:
        os.pwrite(self._fd, (0).to_bytes(_WIDTH, "little"), _FREE_AT)

    def free(self) -> None:
        os.pwrite(self._fd, self.clock().to_bytes(_WIDTH, "little"), _FREE_AT)

    def service(self, tokens_per_second: float | None, backlog_tokens: int, budget_seconds: float) -> None:
        """The measured rate (None: not yet: 0 is written, and nothing is refused by expected wait), the
        tokens queued inside the step and not started, and how long a request may expect to wait."""
        record = _SERVICE.pack(tokens_per_second or 0.0, backlog_tokens, budget_seconds)
        os.pwrite(self._fd, record, _SERVICE_AT)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.close(self._fd)


# Refusals for the queue timeout are logged at most this often (under overload they come by the thousand).
REFUSAL_LOG_SECONDS = 10.0


class QueueBound:
    """The model step's side, in its execute(): a request that waited more than `timeout_seconds` since the
    preprocess step answered it (QUEUED_AT) is refused with UNAVAILABLE before anything is unpacked, and
    after each execute() the newest stamp taken is published, so that the preprocess steps know how many of
    theirs still wait. A request without QUEUED_AT (a client calling the step directly) is never refused."""

    def __init__(
        self,
        timeout_seconds: float,
        publisher: Publisher | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ):
        self.timeout_ns = int(timeout_seconds * 1e9)
        self.publisher = publisher
        self.clock = clock
        self.refused = 0
        self._newest = 0
        self._unlogged = 0
        self._logged_at: int | None = None

    def refusal(self, inputs: Tensors) -> UnavailableError | None:
        stamps = inputs.get(QUEUED_AT)
        if stamps is None or stamps.size == 0:
            return None
        now = self.clock()
        # A stamp from the future (only a client calling the step directly can send one) must not mark
        # every request still waiting as taken.
        self._newest = max(self._newest, min(int(stamps.max()), now))
        waited = now - int(stamps.min())
        if self.timeout_ns <= 0 or waited <= self.timeout_ns:
            return None
        self.refused += 1
        self._unlogged += 1
        if self._logged_at is None or now - self._logged_at >= REFUSAL_LOG_SECONDS * 1e9:
            logger.warning(
                "overloaded: refused %d request(s) that waited over the queue timeout of %g s",
                self._unlogged,
                self.timeout_ns / 1e9,
            )
            self._unlogged, self._logged_at = 0, now
        return UnavailableError(
            f"waited {waited / 1e9:.1f} s for the model step, over its queue timeout of "
            f"{self.timeout_ns / 1e9:g} s: the server is overloaded; retry later"
        )

    def begin(self) -> None:
        """When execute() starts."""
        if self.publisher is not None:
            self.publisher.busy()

    def taken(self) -> None:
        """After an execute() has read its requests."""
        if self.publisher is not None and self._newest:
            self.publisher.taken(self._newest)

    def end(self) -> None:
        """When execute() returns."""
        if self.publisher is not None:
            self.publisher.free()

    def close(self) -> None:
        """At unload: the channel file goes with the step."""
        if self.publisher is not None:
            self.publisher.close()


class QueueGate:
    """The preprocess instance's side: at most `limit` of the requests it handed on wait for the model step,
    and none is let in whose expected wait is over the model step's budget (wait_refusal).
    The file may appear, vanish and be replaced (the model step loads, unloads or is reloaded) at any time;
    while it does not exist or says nothing, nothing is refused.

    `instances`: the preprocess instances feeding the model step. Each sees only its own requests; under
    load Triton spreads the requests over all of them, so the work queued ahead of a new request is about
    its own times `instances`."""

    def __init__(
        self, path: Path, limit: int, clock: Callable[[], int] = time.monotonic_ns, instances: int = 1
    ):
        self.path = path
        self.limit = limit
        self.clock = clock
        self.instances = max(1, instances)
        # (stamp, tokens) of the requests handed on and not yet taken, oldest first.
        self._stamps: deque[tuple[int, int]] = deque()
        self._waiting_tokens = 0
        self._fd: int | None = None
        self._service = (0.0, 0, 0.0)  # the model step's rate, backlog and budget as last read
        self.refused_by_wait = 0

    def admit(self, wanted: int) -> int:
        """How many of `wanted` new requests may be preprocessed; the rest are to be refused."""
        taken, free_since = self._read()
        if taken == 0:
            self._stamps.clear()
            self._waiting_tokens = 0
            return wanted
        now = self.clock()
        idle = int(IDLE_SECONDS * 1e9)
        forget = now - int(FORGET_SECONDS * 1e9)

        def gone(stamp: int) -> bool:
            # Taken, too old to matter, or handed on while the model step was free and not taken since.
            return (
                stamp <= taken or stamp < forget or (free_since != 0 and now - max(stamp, free_since) > idle)
            )

        while self._stamps and gone(self._stamps[0][0]):
            self._waiting_tokens -= self._stamps.popleft()[1]
        return max(0, min(wanted, self.limit - len(self._stamps)))

    def handed_on(self, stamp: int, tokens: int = 0) -> None:
        self._stamps.append((stamp, tokens))
        self._waiting_tokens += tokens

    def tokens_ahead(self) -> int:
        """The work a new request would queue behind, as of the last admit(): this instance's requests
        still waiting (times the instances), the model step's backlog."""
        return self._waiting_tokens * self.instances + self._service[1]

    def wait_refusal(self) -> UnavailableError | None:
        """UNAVAILABLE for a new request whose expected wait (tokens ahead / the model step's measured rate)
        is over the model step's budget; None to go on (also before any rate is measured). Call after
        admit(), which reads the channel; the requests handed on since count too."""
        rate, _, budget = self._service
        wait = over_budget(self.tokens_ahead(), rate or None, budget)
        if wait is None:
            return None
        self.refused_by_wait += 1
        return UnavailableError(
            f"the model step is overloaded (expected wait {wait:.1f} s for the work queued ahead of this "
            f"request, over {budget:g} s); retry later"
        )

    def refusal(self) -> UnavailableError:
        return UnavailableError(
            f"the model step is overloaded ({self.limit} requests from this preprocess instance wait for "
            "it); retry later"
        )

    def _read(self) -> tuple[int, int]:
        """(newest stamp taken, start of the model step's free spell or 0); (0, 0) without a model step.
        Also reads the model step's service record (kept in self._service; zeros when absent)."""
        self._service = (0.0, 0, 0.0)
        try:
            if self._fd is not None and os.fstat(self._fd).st_nlink == 0:
                os.close(self._fd)
                self._fd = None
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
            data = os.pread(self._fd, _SIZE, 0)
        except OSError:
            return 0, 0
        if len(data) < 2 * _WIDTH:
            return 0, 0
        if len(data) == _SIZE:
            self._service = _SERVICE.unpack_from(data, _SERVICE_AT)
        return int.from_bytes(data[:_WIDTH], "little"), int.from_bytes(data[_WIDTH : 2 * _WIDTH], "little")

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
