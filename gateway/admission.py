"""Bounded in-flight requests with a waiting room sized by expected wait, not by count.

A burst (``vllm bench serve`` sends all its requests at t=0) is not overload: every request that can be
served within ``queue_timeout`` waits its turn and is served. A request is shed with 503 + Retry-After
only when its expected wait (queue position / recent completion rate) is longer than the timeout, when it
has actually waited that long, or when the waiting room's hard cap (a memory guard) is reached.

Sustained overload is told from a burst by time: when requests have had to wait for ``burst_seconds``
(every slot taken since) and still arrive faster than they complete, a newcomer is refused at once while
the room holds a round of Triton calls, and what already waits is served, in order: every refusal comes
at arrival, in milliseconds, and nobody who waited out the burst allowance is refused for it. While a
standing queue builds (before overload is told) the newest waiter is served first (adaptive LIFO).

A refusal for load from Triton's own steps (they refuse by expected wait, at once) says the work at Triton
already fills its queue timeout: for ``BACKEND_REFUSAL_SECONDS`` after one, a request that finds no slot free
is refused at once rather than held for the burst allowance only to meet the same refusal, or the gateway's
shedding, seconds later. What already waits stays, and is served as slots free.

With ``latency_ratio`` set, the in-flight bound also follows Triton's latency (``LatencyLimit``): it
shrinks while calls take longer than ratio x the unloaded call latency and grows while they do not, so
that batching buys throughput only as far as the latency target allows; and under overload the room is
closed: only a request that finds a slot free is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import statistics
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from gateway.errors import RETRYABLE, GatewayError, Kind

# Completions within this window give the service rate; fewer than MIN_SAMPLES give no estimate yet.
RATE_WINDOW_SECONDS = 10.0
MIN_SAMPLES = 20
# In-flight bound while the rate is unknown, and its floor once known.
START_IN_FLIGHT = 64
MIN_IN_FLIGHT = 16
# Requests held back this long while the waiting room grows are a standing queue (CoDel's interval):
# served newest first. Short against a burst's seconds, long against one call on an idle host (~5-50 ms).
# A room that stays put (a closed loop of clients: each answer brings the next request) is served in
# order, or its oldest would never be served.
STANDING_QUEUE_SECONDS = 0.1
# The room and the counts of arrivals and completions are sampled at most this often.
SAMPLE_SECONDS = 0.1
# Overload: held back for burst_seconds and, through each of GROWTH_STEPS parts of that time, the room
# grew by OVERLOAD_GROWTH x the completions (arrivals 1.25x completions), by more than the in-flight
# bound in all. A burst's room shrinks once it has arrived; a closed loop's stays put.
GROWTH_STEPS = 4
OVERLOAD_GROWTH = 0.25
# Overload starts only if arrivals over the last ARRIVAL_WINDOW_SECONDS pass completions by that factor
# (and by more than a few: one request after a quiet second is no overload), and lasts until they no
# longer do over the last OVERLOAD_EXIT_SECONDS (a load generator or a client starved of CPU for a second
# must not make the backlog build up again for burst_seconds). The room does not grow meanwhile (newcomers
# beyond a round are refused): neither its size nor a moment when it is empty and a slot free (the bound
# grew) says anything.
ARRIVAL_WINDOW_SECONDS = 1.0
OVERLOAD_EXIT_SECONDS = 3.0
ARRIVAL_SLACK = 4
# Waiters shed per turn of the event loop when overload empties the room (with a latency target): a backlog
# of thousands answered 503 at one instant would stall the event loop (and the admitted requests' answers).
SHED_PER_ARRIVAL = 8

# After Triton's steps refused a call for load, newcomers that find every slot taken are refused at once for
# this long (each such refusal starts it again): about one call, long enough to span the next refusal under
# sustained overload, short enough that a burst behind one refusal is held back for no longer.
BACKEND_REFUSAL_SECONDS = 1.0

# LatencyLimit: the floor (one call alone is what "unloaded" means), the calls alone whose median is the
# unloaded latency, how often that is re-measured when load leaves no call alone, and the fewest
# samples that decide a round.
LATENCY_FLOOR = 1
BASELINE_SAMPLES = 9
PROBE_INTERVAL_SECONDS = 10.0
PROBE_SAMPLES = 3
ROUND_MIN_SAMPLES = 8
# A round over the target by less than this much leaves the bound be, and one shrinks it by a quarter at
# most: noisy latency (a shared host) would otherwise ratchet it down to one call at a time.
DEAD_BAND = 0.9
MAX_SHRINK = 0.75

Clock = Callable[[], float]


@dataclasses.dataclass(frozen=True)
class _Sample:
    time: float
    waiting: int
    arrived: int  # requests that asked for a slot, ever
    completed: int  # calls that finished, ever


class _History:
    """Samples of the waiting room and the arrival and completion counts, one per SAMPLE_SECONDS (the
    state at the last event in it), going back ``span`` seconds."""

    def __init__(self, span: float):
        self.span = span
        self._samples: deque[_Sample] = deque()

    def record(self, sample: _Sample) -> None:
        if self._samples and sample.time - self._samples[-1].time < SAMPLE_SECONDS:
            self._samples[-1] = dataclasses.replace(sample, time=self._samples[-1].time)
            return
        self._samples.append(sample)
        while len(self._samples) > 1 and self._samples[1].time <= sample.time - self.span:
            self._samples.popleft()

    def at(self, when: float) -> _Sample | None:
        """The last sample taken at or before ``when``, or None when history does not go back that far."""
        for sample in reversed(self._samples):
            if sample.time <= when:
                return sample
        return None


@dataclasses.dataclass
class Ticket:
    """One admitted call. ``sample = False`` keeps its duration out of the latency estimate (a call that
    Triton's queue refused at once says nothing about how long a served call takes); ``served = False``
    keeps it out of the completions."""

    started: float
    generation: int
    solo: bool  # nothing else was at Triton when it started
    sample: bool = True
    # False: Triton refused the call (overloaded). It is no completion: counted as one, Triton's fast
    # refusals would read as service, and arrivals would never outpace completions under overload.
    served: bool = True


class LatencyLimit:
    """An in-flight bound that keeps Triton's call latency near ``ratio`` x its unloaded latency (TCP
    Vegas; Netflix concurrency-limits' gradient).

    Unloaded latency is the median duration of the last calls that started with nothing else at Triton;
    when load leaves none for ``PROBE_INTERVAL_SECONDS``, the bound drops to one call until
    ``PROBE_SAMPLES`` have run alone (a ~1 % throughput cost that stops the reference from drifting up with
    the load it should judge). Every round (as many calls as the bound, at least ``ROUND_MIN_SAMPLES``,
    all started under the current bound) compares its median latency with the target: over it by more than
    the dead band, the bound shrinks in proportion (by a quarter at most); under it, and the bound held
    requests back, it grows by half the room left under the target (by half at most)."""

    def __init__(self, ratio: float, ceiling: int, clock: Clock = time.monotonic):
        self.ratio = ratio
        self.ceiling = max(ceiling, LATENCY_FLOOR)
        self._clock = clock
        self.value = float(LATENCY_FLOOR)
        # Bumped whenever the bound changes: calls started before then measured another bound.
        self.generation = 0
        self.probing = False
        self._probe_samples = 0
        self._solo: deque[tuple[float, float]] = deque(maxlen=BASELINE_SAMPLES)  # (when, seconds)
        self._round: list[float] = []
        self._held_back = False

    def current(self) -> int:
        return LATENCY_FLOOR if self.probing else int(self.value)

    def baseline(self) -> float | None:
        """Unloaded call latency (seconds), or None before any call ran alone."""
        return statistics.median(seconds for _, seconds in self._solo) if self._solo else None

    def target(self) -> float | None:
        baseline = self.baseline()
        return None if baseline is None else self.ratio * baseline

    def held_back(self) -> None:
        """A request had to wait for the bound: growing it would have been used."""
        self._held_back = True

    def observe(self, ticket: Ticket, seconds: float) -> None:
        now = self._clock()
        if ticket.solo:
            self._solo.append((now, seconds))
            if self.probing:
                self._probe_samples += 1
                if self._probe_samples >= PROBE_SAMPLES:
                    self.probing = False
                    self.generation += 1
                return
        if ticket.generation != self.generation or self.probing:
            return
        self._round.append(seconds)
        if len(self._round) < max(ROUND_MIN_SAMPLES, int(self.value)):
            return
        recent = statistics.median(self._round)
        self._round.clear()
        self._adjust(recent)
        last_alone = self._solo[-1][0] if self._solo else -math.inf
        if int(self.value) > LATENCY_FLOOR and now - last_alone > PROBE_INTERVAL_SECONDS:
            self.probing = True
            self._probe_samples = 0
            self.generation += 1

    def _adjust(self, recent: float) -> None:
        target = self.target()
        if target is None:  # unreachable: the first call starts alone
            return
        gradient = target / max(recent, 1e-9)
        value = self.value
        if gradient < DEAD_BAND:
            value = max(float(LATENCY_FLOOR), value * max(MAX_SHRINK, gradient))
        elif gradient > 1.0 and self._held_back:
            # In proportion to the room left under the target: a whole call more at a small bound (2 -> 3
            # on a 2-core host: median 22 -> 30 ms) would overshoot it every few rounds.
            value = min(float(self.ceiling), value * (1.0 + min(gradient - 1.0, 1.0) / 2))
        self._held_back = False
        if int(value) != int(self.value):
            self.generation += 1
        self.value = value


class Admission:
    """``max_in_flight`` caps the requests at Triton; with ``in_flight_seconds`` the bound follows the
    measured rate (rate x seconds: what Triton finishes in that time), so that a request's wait inside
    Triton stays under its queue timeout on a slow host and batches grow on a fast one; with
    ``latency_ratio`` it also follows Triton's latency (``LatencyLimit``). ``burst_seconds`` (0 = off:
    first come, first served, and only the queue timeout sheds) is how long arrivals may outpace
    completions before that counts as overload."""

    def __init__(
        self,
        max_in_flight: int,
        max_waiting: int,
        queue_timeout: float,
        in_flight_seconds: float = 0.0,
        latency_ratio: float = 0.0,
        burst_seconds: float = 0.0,
        clock: Clock = time.monotonic,
    ):
        self.max_in_flight = max_in_flight
        self.max_waiting = max_waiting
        self.queue_timeout = queue_timeout
        self.in_flight_seconds = in_flight_seconds
        self.burst_seconds = burst_seconds
        self.latency = LatencyLimit(latency_ratio, max_in_flight, clock) if latency_ratio > 0 else None
        self._clock = clock
        self.in_flight = 0
        self.shed_overload = 0  # requests refused because arrivals kept outpacing completions
        self._waiters: deque[asyncio.Future[Ticket]] = deque()
        self._completions: deque[float] = deque()
        self._busy_since: float | None = None  # first admission since the gateway was last idle
        # Since when requests have had to wait, every slot taken (None: a slot was free with no one waiting).
        self._saturated_since: float | None = None
        self._overload = False
        self._draining = False  # _drain() is shedding the waiting room
        self._arrived = 0
        self._completed = 0
        self._backend_refused_at = -math.inf
        self._history = _History(max(burst_seconds, OVERLOAD_EXIT_SECONDS) + 1.0)

    def limit(self) -> int:
        limit = self._rate_limit()
        return limit if self.latency is None else min(limit, self.latency.current())

    def _rate_limit(self) -> int:
        if not self.in_flight_seconds:
            return self.max_in_flight
        rate = self.rate()
        if rate is None:
            return min(self.max_in_flight, START_IN_FLIGHT)
        return max(
            min(MIN_IN_FLIGHT, self.max_in_flight),
            min(self.max_in_flight, int(rate * self.in_flight_seconds)),
        )

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def rate(self) -> float | None:
        """Requests completed per second over the recent window, or None before there is enough data."""
        now = self._clock()
        while self._completions and now - self._completions[0] > RATE_WINDOW_SECONDS:
            self._completions.popleft()
        if len(self._completions) < MIN_SAMPLES:
            return None
        # Batched requests finish in clumps: measure over the busy time, not from the first completion.
        busy = now - (self._busy_since if self._busy_since is not None else self._completions[0])
        return len(self._completions) / max(min(busy, RATE_WINDOW_SECONDS), 1e-3)

    def expected_wait(self) -> float | None:
        rate = self.rate()
        return None if rate is None else (self.waiting + 1) / rate

    def backend_refused(self) -> None:
        """Triton's steps refused a call for load (by their expected wait): see BACKEND_REFUSAL_SECONDS."""
        self._backend_refused_at = self._clock()

    def _saturated_for(self, now: float) -> float:
        return 0.0 if self._saturated_since is None else now - self._saturated_since

    def _sample(self, now: float) -> _Sample:
        return _Sample(now, len(self._waiters), self._arrived, self._completed)

    def standing(self, now: float | None = None) -> bool:
        """Serve the newest first: held back for STANDING_QUEUE_SECONDS while the room grew by more than the
        bound over the last ARRIVAL_WINDOW_SECONDS, and not overloaded. Under overload newcomers beyond a
        round are refused at once and the room (the burst allowance's backlog) is served in order: newest
        first, its oldest would wait for as long as the overload lasts."""
        if not self.burst_seconds:
            return False
        now = self._clock() if now is None else now
        if self.overloaded(now):
            return False
        if self._saturated_since is None or now - self._saturated_since < STANDING_QUEUE_SECONDS:
            return False
        # Since saturation began the room grew from empty.
        since = now - ARRIVAL_WINDOW_SECONDS
        before = self._history.at(since) if since > self._saturated_since else None
        return len(self._waiters) - (before.waiting if before else 0) > self.limit()

    def overloaded(self, now: float | None = None) -> bool:
        """Held back for longer than a burst while the room kept growing; it lasts while arrivals outpace
        completions (the room, kept small, may even empty for an instant at a hand-over)."""
        if not self.burst_seconds:
            return False
        now = self._clock() if now is None else now
        current = self._sample(now)
        if self._overload:
            self._overload = self._outpaced(current, OVERLOAD_EXIT_SECONDS)
        elif self._saturated_for(now) >= self.burst_seconds:
            self._overload = self._grew(current) and self._outpaced(current, ARRIVAL_WINDOW_SECONDS)
        return self._overload

    def _outpaced(self, current: _Sample, window: float) -> bool:
        before = self._history.at(current.time - window)
        if before is None:
            return False
        arrived, completed = current.arrived - before.arrived, current.completed - before.completed
        return arrived > (1 + OVERLOAD_GROWTH) * completed + ARRIVAL_SLACK

    def _grew(self, current: _Sample) -> bool:
        start = self._history.at(current.time - self.burst_seconds)
        if start is None or current.waiting - start.waiting <= self.limit():
            return False
        step = self.burst_seconds / GROWTH_STEPS
        later = current
        for part in range(1, GROWTH_STEPS + 1):
            earlier = self._history.at(current.time - part * step)
            if earlier is None:
                return False
            if later.waiting - earlier.waiting <= OVERLOAD_GROWTH * (later.completed - earlier.completed):
                return False
            later = earlier
        return True

    def _shed(self, message: str, retry_after: float | None = None) -> GatewayError:
        seconds = math.ceil(retry_after) if retry_after else None
        return GatewayError(Kind.OVERLOADED, message, retry_after=seconds)

    @asynccontextmanager
    async def slot(self, deadline: float | None = None) -> AsyncIterator[Ticket]:
        """An in-flight slot, waited for until ``deadline`` (on this admission's clock, time.monotonic by
        default; default: the queue timeout from now). The call's duration is a latency sample unless it
        raises or sets ``ticket.sample = False``."""
        ticket = await self._acquire(self.queue_timeout if deadline is None else deadline - self._clock())
        failed = False
        try:
            yield ticket
        except BaseException as error:
            failed = True
            if isinstance(error, GatewayError) and error.kind in RETRYABLE:
                ticket.served = False  # refused by Triton (or Triton down): not served
            raise
        finally:
            self._release(ticket if not failed and ticket.sample else None, completed=ticket.served)

    def _admit(self, now: float) -> Ticket:
        ticket = Ticket(now, self.latency.generation if self.latency else 0, solo=self.in_flight == 0)
        self.in_flight += 1
        return ticket

    async def _acquire(self, timeout: float) -> Ticket:
        now = self._clock()
        self._arrived += 1
        if self.burst_seconds:
            self._history.record(self._sample(now))
        if self.in_flight == 0 and not self._waiters:
            self._busy_since = now
        if self.in_flight < self.limit() and not self._waiters:
            return self._admit(now)
        if self.latency is not None:
            self.latency.held_back()
        if self._saturated_since is None:
            self._saturated_since = now
        if timeout <= 0:
            raise self._shed(
                f"server overloaded: no capacity within the queue timeout of {self.queue_timeout:g} s"
            )
        if now - self._backend_refused_at < BACKEND_REFUSAL_SECONDS:
            raise self._shed(
                "server overloaded: Triton refused work for load just now and every in-flight slot is taken"
            )
        overloaded = self.overloaded(now)
        if overloaded and self.latency is not None:
            # With a latency target nobody waits under overload: a waiter would add up to a whole call to
            # its latency (4x overload, tiny model on its own core: admitted p50 27-30 -> 23-25 ms, README
            # "Overload through the gateway"), and those left from the burst allowance have waited for up
            # to that long already. They are shed, and so is the newcomer unless a slot is free.
            self._drain()
            if self.in_flight < self.limit():
                return self._admit(now)
            raise self._shed(
                "server overloaded: every in-flight slot is taken while requests keep arriving faster "
                "than they complete"
            )
        if overloaded and self.waiting >= max(1, min(self.limit(), self.max_waiting)):
            # Told from a burst: the newcomer is refused at once while the room holds a round of calls (what
            # the bound lets in at once), and what already waits is served. Shedding the oldest waiters
            # instead answered the burst allowance's requests 503 once they had waited it out (refusal p99
            # = GATEWAY_BURST_SECONDS); a refusal is only useful fast.
            self.shed_overload += 1
            rate = self.rate()
            raise self._shed(
                f"server overloaded: requests keep arriving faster than they complete, and {self.waiting} "
                "already wait",
                retry_after=self.waiting / rate if rate else None,
            )
        if self.waiting >= self.max_waiting:
            raise self._shed(f"server overloaded: {self.waiting} requests already waiting")
        if not overloaded:
            expected = self.expected_wait()
            if expected is not None and expected > timeout:
                raise self._shed(
                    f"server overloaded: expected wait {expected:.1f} s is over the queue timeout "
                    f"of {self.queue_timeout:g} s",
                    retry_after=expected - timeout,
                )
        waiter: asyncio.Future[Ticket] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError) as error:
            future = waiter
            if future.done() and not future.cancelled() and future.exception() is None:
                # The slot was handed over just as we gave up: pass it on.
                self._release(None, completed=False)
            elif not future.done():
                future.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if isinstance(error, asyncio.CancelledError):
                raise
            raise self._shed(
                f"server overloaded: no capacity within the queue timeout of {self.queue_timeout:g} s"
            ) from None

    def _drain(self) -> None:
        """Sheds every waiter, SHED_PER_ARRIVAL per turn of the event loop so that the answers of admitted
        requests are not held up behind a backlog's 503s."""
        if self._draining or not self._waiters:
            return
        self._draining = True

        def step() -> None:
            self._shed_oldest(keep=0, at_most=SHED_PER_ARRIVAL)
            if self._waiters:
                asyncio.get_running_loop().call_soon(step)
            else:
                self._draining = False

        step()

    def _shed_oldest(self, keep: int, at_most: int) -> None:
        shed = 0
        while len(self._waiters) > keep and shed < at_most:
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            waiter.set_exception(
                self._shed(
                    "server overloaded: requests keep arriving faster than they complete, and the "
                    "longest waiting are refused first"
                )
            )
            shed += 1
            self.shed_overload += 1

    def _release(self, measured: Ticket | None, completed: bool = True) -> None:
        now = self._clock()
        if completed:
            self._completions.append(now)
            self._completed += 1
        if measured is not None and self.latency is not None:
            self.latency.observe(measured, now - measured.started)
        self.in_flight -= 1
        # Slots pass straight to waiters (counted here, so that in_flight never overshoots), as many as
        # the bound allows now: it may have grown or shrunk since.
        limit = self.limit()
        newest_first = self.standing(now)
        if self.latency is not None and self.overloaded(now):
            self._drain()  # no waiter is served under overload with a latency target: see _acquire
            limit = 0
        while self._waiters and self.in_flight < limit:
            waiter = self._waiters.pop() if newest_first else self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(self._admit(now))
        if not self._waiters and self.in_flight < self.limit():
            self._saturated_since = None
        if self.burst_seconds:
            self._history.record(self._sample(now))
