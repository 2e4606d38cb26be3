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
publishes its progress (the oldest stamp among the requests it has taken and not answered, and when it last
answered one) and its wait budget (queue_timeout_seconds x expected_wait_share); a preprocess instance
measures how fast its own requests are answered (backend.admission.ServiceRate: tokens per second over
spells when some of them were unanswered, so every cost of serving counts, idle time does not, and its share
of the model step is what it measures; text and media apart), and before it tokenises a request refuses it
when the tokens of its requests not yet answered would take longer than the budget at those rates
(QueueGate.wait_refusal). Nothing is refused before the rates of the work ahead are measured.

The channel is a file of 40 bytes (the newest stamp taken; the start of the free spell or 0 inside
execute(); the oldest stamp taken and not answered or 0; when a request was last answered; the wait budget
in seconds, float64), one per ensemble and tritonserver: both steps' stubs are children of the same
tritonserver process, whose pid names the file.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import struct
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path

from backend.admission import KINDS, TEXT, ServiceRate, expected_wait_of, split_spell
from backend.errors import UnavailableError
from backend.protocol import QUEUED_AT, Result, Tensors

logger = logging.getLogger(__name__)

_WIDTH = 8
_FREE_AT = _WIDTH  # offset of the free spell's start
_PROGRESS_AT = 2 * _WIDTH  # offset of (oldest unanswered stamp, last answer's time)
_PROGRESS = struct.Struct("<qq")
_BUDGET_AT = _PROGRESS_AT + _PROGRESS.size  # offset of the wait budget (seconds, float64)
_BUDGET = struct.Struct("<d")
_SIZE = _BUDGET_AT + _BUDGET.size
# Longer than any gap between two execute()s under load: at 4x overload on 2 shared cores a 50 ms allowance
# forgot requests that were waiting (the model step's queue grew from 2.4 s to 5.5 s).
IDLE_SECONDS = 1.0
# How often a preprocess instance looks for its requests' answers between execute()s (QueueGate.poll): a
# rate sample ends at most about this late.
WATCH_SECONDS = 0.01
# ... and while the model step publishes no wait budget (expected_wait_share 0), only this often.
UNMEASURED_WATCH_SECONDS = 1.0
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
        self.progress(0, 0)
        self.budget(0.0)

    def taken(self, stamp: int) -> None:
        if stamp > self._newest:
            self._newest = stamp
            os.pwrite(self._fd, stamp.to_bytes(_WIDTH, "little"), 0)

    def busy(self) -> None:
        os.pwrite(self._fd, (0).to_bytes(_WIDTH, "little"), _FREE_AT)

    def free(self) -> None:
        os.pwrite(self._fd, self.clock().to_bytes(_WIDTH, "little"), _FREE_AT)

    def progress(self, oldest_unanswered: int, answered_at: int) -> None:
        """The oldest stamp taken and not answered (0: none), and when a request was last answered."""
        os.pwrite(self._fd, _PROGRESS.pack(oldest_unanswered, answered_at), _PROGRESS_AT)

    def budget(self, seconds: float) -> None:
        """How long a request may expect to wait for the step (0: no refusal by expected wait)."""
        os.pwrite(self._fd, _BUDGET.pack(seconds), _BUDGET_AT)

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
    theirs still wait. A request without QUEUED_AT (a client calling the step directly) is never refused.

    `wait_share` > 0: the budget timeout x share is published, and the stamps of the requests taken and not
    yet answered (`answered`), for the preprocess steps' refusal by expected wait."""

    def __init__(
        self,
        timeout_seconds: float,
        publisher: Publisher | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        wait_share: float = 0.0,
    ):
        self.timeout_ns = int(timeout_seconds * 1e9)
        self.publisher = publisher
        self.clock = clock
        self.refused = 0
        self._newest = 0
        self._unlogged = 0
        self._logged_at: int | None = None
        self.tracking = publisher is not None and wait_share > 0 and timeout_seconds > 0
        # Stamps of the requests taken and not answered: a heap, with answered ones removed lazily.
        self._unanswered: list[int] = []
        self._answered: Counter[int] = Counter()
        self._answered_at = 0  # when a request was last answered (clock ns; 0: none yet)
        self._lock = threading.Lock()  # answers come from execute() and from the worker thread
        if self.tracking and publisher is not None:
            publisher.budget(timeout_seconds * wait_share)

    def answered(self, inputs: Tensors, answer: Callable[[Result], None]) -> Callable[[Result], None]:
        """`answer` for a request just taken, which also marks it answered (the oldest unanswered stamp
        and the time go to the preprocess steps)."""
        stamps = inputs.get(QUEUED_AT)
        if not self.tracking or stamps is None or stamps.size == 0:
            return answer
        stamp = min(int(stamps.min()), self.clock())
        with self._lock:
            heapq.heappush(self._unanswered, stamp)
            # Published before taken() is: a preprocess instance that sees the request taken must also see
            # it unanswered, or it counts it answered at the last answer's time, before it was even sent
            # (with a watcher polling every 10 ms, every sample of a sequential warm-up was lost that way).
            if self.publisher is not None:
                self.publisher.progress(self._unanswered[0], self._answered_at)

        def deliver(result: Result) -> None:
            try:
                answer(result)
            finally:
                self._done(stamp)

        return deliver

    def _done(self, stamp: int) -> None:
        with self._lock:
            self._answered[stamp] += 1
            while self._unanswered and self._answered[self._unanswered[0]]:
                oldest = heapq.heappop(self._unanswered)
                self._answered[oldest] -= 1
                if not self._answered[oldest]:
                    del self._answered[oldest]
            oldest = self._unanswered[0] if self._unanswered else 0
            self._answered_at = self.clock()
            if self.publisher is not None:
                self.publisher.progress(oldest, self._answered_at)

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
    """The preprocess instance's side: at most `limit` of the requests it handed on wait for the model step
    (handed on and not taken), and none is let in whose expected wait is over the model step's budget
    (wait_refusal). The file may appear, vanish and be replaced (the model step loads, unloads or is
    reloaded) at any time; while it does not exist or says nothing, nothing is refused.

    For the expected wait each instance counts the tokens of its requests not yet answered, and measures
    the rate at which they are answered (`rates`, text and media apart): its share of the model step's
    work, so the one over the other is the expected wait however Triton spreads the requests over the
    instances."""

    def __init__(
        self,
        path: Path,
        limit: int,
        clock: Callable[[], int] = time.monotonic_ns,
        rate_smoothing: float = 0.2,
        watch_seconds: float = 0.0,
    ):
        self.path = path
        self.limit = limit
        self.clock = clock
        # How fast this instance's requests are answered, text and media apart (backend.admission).
        self.rates = {kind: ServiceRate(rate_smoothing) for kind in KINDS}
        # admit() runs in execute() (Triton's thread) and poll() in the watcher: one at a time.
        self._lock = threading.Lock()
        # (stamp, tokens, kind) of the requests handed on and not yet answered (or forgotten), oldest first.
        self._stamps: deque[tuple[int, int, str]] = deque()
        self._unanswered: Counter[str] = Counter()
        # Since when the model step has been answering this instance's requests (some always unanswered).
        self._draining_since: int | None = None
        self._fd: int | None = None
        self._budget = 0.0  # the model step's wait budget as last read
        self.refused_by_wait = 0
        self._pending = threading.Event()  # set while requests handed on are unanswered
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None
        if watch_seconds > 0:
            self._watcher = threading.Thread(
                target=self._watch, args=(watch_seconds,), name="queue-gate-watch", daemon=True
            )
            self._watcher.start()

    def _watch(self, interval: float) -> None:
        """Every `interval` while requests handed on are unanswered: poll(); every UNMEASURED_WATCH_SECONDS
        while the model step publishes no wait budget (expected wait off: the rates serve nothing)."""
        while True:
            self._pending.wait()
            if self._closed.wait(interval if self._budget > 0.0 else UNMEASURED_WATCH_SECONDS):
                return
            self.poll()

    def admit(self, wanted: int) -> int:
        """How many of `wanted` new requests may be preprocessed; the rest are to be refused."""
        with self._lock:
            return self._admit(wanted)

    def poll(self) -> None:
        """Take note of the requests answered so far (the watcher's turn, between execute()s).

        Without it a request's answer is seen only at the next execute(), and the rate sample then ends at
        the model step's last answer, which may be another instance's request seconds later: those seconds
        counted as the time ours took (a burst after a quiet spell was refused with "expected wait 67 s" for
        work that took 2 s)."""
        with self._lock:
            self._admit(0)

    def _admit(self, wanted: int) -> int:
        taken, free_since, oldest, answered_at, self._budget = self._read()
        if taken == 0:
            self._stamps.clear()
            self._unanswered.clear()
            self._draining_since = None
            self._pending.clear()
            return wanted
        now = self.clock()
        idle = int(IDLE_SECONDS * 1e9)
        forget = now - int(FORGET_SECONDS * 1e9)

        def answered(stamp: int) -> bool:
            # Taken, and older than every request taken and not answered. A model step that publishes no
            # progress (0, 0) has answered what it took, as far as the count bound is concerned; one whose
            # oldest is older than anything remembered has lost track of it.
            return stamp <= taken and (oldest == 0 or stamp < oldest or oldest < forget)

        def forgotten(stamp: int) -> bool:
            # Too old to matter, or not taken and handed on while the model step was free and not taken since.
            idle_since = 0 if free_since == 0 else now - max(stamp, free_since)
            return stamp < forget or (stamp > taken and idle_since > idle)

        drained: Counter[str] = Counter()
        while self._stamps and (answered(self._stamps[0][0]) or forgotten(self._stamps[0][0])):
            stamp, tokens, kind = self._stamps.popleft()
            self._unanswered[kind] -= tokens
            drained[kind] += tokens if answered(stamp) else 0
        self._measure(drained, answered_at or now)
        if not self._stamps:
            self._pending.clear()
        waiting = 0  # not taken (the newest, stamped after `taken`) nor forgotten
        for stamp, _, _ in reversed(self._stamps):
            if stamp <= taken:
                break
            waiting += not forgotten(stamp)
        return max(0, min(wanted, self.limit - waiting))

    def _measure(self, drained: Counter[str], answered_at: int) -> None:
        """A rate sample: `drained` tokens of ours (per kind) were answered between the start of the spell
        (the first of them handed on, or the previous sample) and the model step's last answer. A spell
        that answered both kinds is shared between them by what each kind's tokens cost at its rate."""
        done = {kind: tokens for kind, tokens in drained.items() if tokens > 0}
        if done and self._draining_since is not None and answered_at > self._draining_since:
            finished = answered_at / 1e9
            spell = finished - self._draining_since / 1e9
            for kind, seconds in (split_spell(done, self.rates, spell) or {}).items():
                self.rates[kind].done(done[kind], finished - seconds, finished)
        if done:
            self._draining_since = max(answered_at, self._stamps[0][0]) if self._stamps else None

    def handed_on(self, stamp: int, tokens: int = 0, kind: str = TEXT) -> None:
        with self._lock:
            if not self._stamps:
                self._draining_since = stamp
            self._stamps.append((stamp, tokens, kind))
            self._unanswered[kind] += tokens
            self._pending.set()

    def tokens_ahead(self) -> int:
        """The work a new request would queue behind, in this instance's share, as of the last admit()
        and the requests handed on since: the tokens of its requests not answered."""
        return sum(self._unanswered.values())

    def wait_refusal(self) -> UnavailableError | None:
        """UNAVAILABLE for a new request whose expected wait (tokens ahead / the measured rate) is over the
        model step's budget; None to go on (also before any rate is measured). Call after admit(), which
        reads the channel."""
        with self._lock:
            wait = None if self._budget <= 0.0 else expected_wait_of(self._unanswered, self.rates)
        if wait is None or wait <= self._budget:
            return None
        self.refused_by_wait += 1
        return UnavailableError(
            f"the model step is overloaded (expected wait {wait:.1f} s for the work queued ahead of this "
            f"request, over {self._budget:g} s); retry later"
        )

    def refusal(self) -> UnavailableError:
        return UnavailableError(
            f"the model step is overloaded ({self.limit} requests from this preprocess instance wait for "
            "it); retry later"
        )

    def _read(self) -> tuple[int, int, int, int, float]:
        """(newest stamp taken, start of the model step's free spell or 0, oldest stamp taken and not
        answered or 0, when it last answered or 0, wait budget or 0); zeros without a model step, and the
        last three zeros from a model step that does not publish them."""
        try:
            if self._fd is not None and os.fstat(self._fd).st_nlink == 0:
                os.close(self._fd)
                self._fd = None
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
            data = os.pread(self._fd, _SIZE, 0)
        except OSError:
            return 0, 0, 0, 0, 0.0
        if len(data) < 2 * _WIDTH:
            return 0, 0, 0, 0, 0.0
        taken, free_since = (
            int.from_bytes(data[:_WIDTH], "little"),
            int.from_bytes(data[_WIDTH:_PROGRESS_AT], "little"),
        )
        if len(data) < _SIZE:
            return taken, free_since, 0, 0, 0.0
        oldest, answered_at = _PROGRESS.unpack_from(data, _PROGRESS_AT)
        (budget,) = _BUDGET.unpack_from(data, _BUDGET_AT)
        return taken, free_since, int(oldest), int(answered_at), float(budget)

    def close(self) -> None:
        self._closed.set()
        self._pending.set()
        if self._watcher is not None:
            self._watcher.join(timeout=1.0)
        with self._lock:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None
