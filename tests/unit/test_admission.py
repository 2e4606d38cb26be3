"""The gateway's admission on a fake clock: the latency-targeting in-flight bound, newest-first service under
a standing queue, fast shedding under sustained overload, and a burst served whole. Decisions read the fake
clock only, so nothing here depends on how busy the machine is."""

from __future__ import annotations

import asyncio

import pytest

from gateway.admission import (
    BACKEND_REFUSAL_SECONDS,
    LATENCY_FLOOR,
    PROBE_INTERVAL_SECONDS,
    PROBE_SAMPLES,
    ROUND_MIN_SAMPLES,
    SHED_PER_ARRIVAL,
    Admission,
    LatencyLimit,
    Ticket,
)
from gateway.errors import GatewayError, Kind


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_round(limit: LatencyLimit, seconds: float, held_back: bool = True) -> None:
    """One round of calls, all started under the current bound, each taking ``seconds``."""
    if held_back:
        limit.held_back()
    generation = limit.generation
    for _ in range(max(ROUND_MIN_SAMPLES, limit.current())):
        limit.observe(Ticket(0.0, generation, solo=False), seconds)


def test_the_latency_bound_grows_while_calls_are_fast_and_shrinks_when_they_slow_down():
    clock = FakeClock()
    limit = LatencyLimit(ratio=2.0, ceiling=64, clock=clock)
    assert limit.current() == LATENCY_FLOOR and limit.target() is None
    for _ in range(3):
        limit.observe(Ticket(0.0, limit.generation, solo=True), 0.010)
    assert limit.baseline() == pytest.approx(0.010) and limit.target() == pytest.approx(0.020)

    run_round(limit, 0.012, held_back=False)
    assert limit.current() == LATENCY_FLOOR  # fast, but nothing waited: no evidence more would be used
    bounds = []
    for _ in range(20):
        run_round(limit, 0.012)  # under the 20 ms target
        bounds.append(limit.current())
    assert bounds == sorted(bounds) and bounds[-1] == 64  # grows to the ceiling, never past it

    shrinking = []
    for _ in range(16):
        run_round(limit, 0.050)  # 2.5x over the target
        shrinking.append(limit.current())
    assert shrinking[0] == 48  # by a quarter at most per round
    assert shrinking == sorted(shrinking, reverse=True) and shrinking[-1] == LATENCY_FLOOR

    # A call that started before the bound changed measured the old bound: it decides nothing.
    stale = limit.generation - 1
    before = limit.value
    for _ in range(10):
        limit.observe(Ticket(0.0, stale, solo=False), 10.0)
    assert limit.value == before


def test_the_latency_bound_settles_where_latency_meets_the_target():
    """Latency that grows with the calls at Triton (batching): the bound ends where it crosses 2x."""
    clock = FakeClock()
    limit = LatencyLimit(ratio=2.0, ceiling=256, clock=clock)
    limit.observe(Ticket(0.0, 0, solo=True), 0.005)
    for _ in range(60):
        run_round(limit, 0.005 * (1 + limit.current() / 8))  # 2x the unloaded latency at 8 in flight
    assert 4 <= limit.current() <= 12


def test_the_latency_bound_grows_by_the_room_left_under_the_target_and_not_in_the_dead_band():
    """A whole call more at a small bound overshoots the target: growth follows the room left under it, and
    a round just over the target (inside the dead band) leaves the bound be."""
    clock = FakeClock()
    limit = LatencyLimit(ratio=1.25, ceiling=64, clock=clock)
    limit.observe(Ticket(0.0, 0, solo=True), 0.010)  # target 12.5 ms
    limit.value = 2.0
    run_round(limit, 0.013)  # 4 % over the target: inside the dead band
    assert limit.value == 2.0
    run_round(limit, 0.0125 / 1.1)  # 10 % of room under the target: 5 % more
    assert limit.value == pytest.approx(2.1) and limit.current() == 2
    run_round(limit, 0.0125 / 3)  # far under: by half at most
    assert limit.value == pytest.approx(3.15)


def test_the_unloaded_latency_is_measured_again_when_load_leaves_no_call_alone():
    clock = FakeClock()
    limit = LatencyLimit(ratio=2.0, ceiling=64, clock=clock)
    limit.observe(Ticket(0.0, 0, solo=True), 0.010)
    for _ in range(10):
        run_round(limit, 0.012)
    grown = limit.current()
    assert grown > 8 and not limit.probing
    clock.now = PROBE_INTERVAL_SECONDS + 1
    run_round(limit, 0.012)
    assert limit.probing and limit.current() == LATENCY_FLOOR  # one call at a time, to time it alone
    for _ in range(PROBE_SAMPLES):
        limit.observe(Ticket(clock.now, limit.generation, solo=True), 0.004)
    assert not limit.probing and limit.current() >= grown
    assert limit.baseline() < 0.010  # the new, lower unloaded latency counts


def test_admission_honours_the_latency_bound():
    clock = FakeClock()
    admission = Admission(
        max_in_flight=64, max_waiting=100, queue_timeout=5.0, latency_ratio=2.0, clock=clock
    )
    assert admission.limit() == LATENCY_FLOOR
    admission.latency.value = 7.0
    assert admission.limit() == 7
    assert (
        Admission(max_in_flight=4, max_waiting=1, queue_timeout=1.0, latency_ratio=2.0).latency.ceiling == 4
    )


async def settle() -> None:
    """Let woken tasks run (a shed waiter's error passes a shield and a wait_for on its way)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def _hold(admission: Admission, release: asyncio.Event) -> None:
    async with admission.slot():
        await release.wait()


async def _queue(admission: Admission, count: int, served: list[int], outcomes: dict[int, object], start=0):
    """``count`` requests that wait in turn (each reaches the waiting room before the next starts)."""

    async def request(index: int) -> None:
        try:
            async with admission.slot():
                served.append(index)
            outcomes[index] = "served"
        except GatewayError as error:
            outcomes[index] = error.kind

    tasks = []
    for index in range(start, start + count):
        tasks.append(asyncio.create_task(request(index)))
        await asyncio.sleep(0)
    return tasks


@pytest.mark.parametrize(
    ("burst_seconds", "queued_for", "expected"),
    [(5.0, 0.5, [4, 3, 2, 1, 0]), (5.0, 0.05, [0, 1, 2, 3, 4]), (0.0, 0.5, [0, 1, 2, 3, 4])],
    ids=["standing-queue-newest-first", "short-queue-in-order", "off-in-order"],
)
def test_a_standing_queue_is_served_newest_first(burst_seconds, queued_for, expected):
    async def scenario():
        clock = FakeClock()
        admission = Admission(
            max_in_flight=1, max_waiting=100, queue_timeout=60.0, burst_seconds=burst_seconds, clock=clock
        )
        release = asyncio.Event()
        holder = asyncio.create_task(_hold(admission, release))
        await asyncio.sleep(0)
        served, outcomes = [], {}
        tasks = await _queue(admission, 5, served, outcomes)
        clock.now = queued_for
        release.set()
        await asyncio.gather(holder, *tasks)
        return served, admission

    served, admission = asyncio.run(scenario())
    assert served == expected
    assert admission.in_flight == 0 and admission.waiting == 0


async def _serve_quickly(admission: Admission, clock: FakeClock, count: int, seconds: float) -> None:
    """``count`` calls one after another, each taking ``seconds``: gives the admission a completion rate."""
    for _ in range(count):
        async with admission.slot():
            clock.now += seconds


async def _arrive(admission, clock, until, served, outcomes, tasks, per_tick=5, tick=0.25) -> None:
    """An open loop: ``per_tick`` requests every ``tick`` seconds of the fake clock up to ``until``."""
    while clock.now + tick <= until + 1e-9:
        clock.now += tick
        tasks += await _queue(admission, per_tick, served, outcomes, start=len(tasks))


async def _busy(slots: int) -> tuple[FakeClock, Admission, asyncio.Event, list[asyncio.Task]]:
    """An admission of `slots` in flight that has a completion rate (40 calls in its first second) and every
    slot held until the event is set."""
    clock = FakeClock()
    admission = Admission(
        max_in_flight=slots, max_waiting=10_000, queue_timeout=60.0, burst_seconds=5.0, clock=clock
    )
    await _serve_quickly(admission, clock, 40, 0.025)
    release = asyncio.Event()
    holders = [asyncio.create_task(_hold(admission, release)) for _ in range(slots)]
    await asyncio.sleep(0)
    return clock, admission, release, holders


def test_sustained_overload_refuses_newcomers_at_once_and_serves_those_already_waiting_in_order():
    """Once overload is told from a burst every refusal comes at arrival: a newcomer is refused while the
    room holds a round of calls, and the burst allowance's waiters are served (oldest first, or they would
    wait for as long as the overload lasts), not refused once they have waited it out."""

    async def scenario():
        clock, admission, release, holders = await _busy(2)
        served, outcomes, tasks = [], {}, []
        # 20 requests a second, none completing. Within the burst allowance everything waits (a burst
        # looks like this at first), newest on top.
        await _arrive(admission, clock, 5.75, served, outcomes, tasks)
        await settle()
        assert admission.waiting == len(tasks) == 95 and not outcomes and not admission.overloaded()
        assert admission.standing()
        # Held back for 5 s, the room growing all along: overload. Newcomers are refused at once; nobody
        # who waited is.
        clock.now = 6.25
        for _ in range(16):
            tasks += await _queue(admission, 1, served, outcomes, start=len(tasks))
        await settle()
        assert admission.overloaded() and not admission.standing()
        assert sorted(outcomes) == list(range(95, 111))
        assert all(outcome is Kind.OVERLOADED for outcome in outcomes.values())
        assert admission.waiting == 95 and admission.shed_overload == 16
        release.set()
        await asyncio.gather(*holders, *tasks)
        return served, outcomes, admission

    served, outcomes, admission = asyncio.run(scenario())
    assert served == list(range(95))  # the waiters, in order
    assert sum(outcome is Kind.OVERLOADED for outcome in outcomes.values()) == 16
    assert admission.shed_overload == 16 and admission.waiting == 0 and admission.in_flight == 0


def test_under_overload_a_newcomer_waits_once_the_room_is_down_to_a_round():
    """The room drains to below a round of calls: the next arrival waits its turn (behind the room, in
    order) rather than being refused, and its refusal says how long the room takes to drain."""

    async def scenario():
        clock, admission, release, holders = await _busy(2)
        served, outcomes, tasks = [], {}, []
        await _arrive(admission, clock, 5.75, served, outcomes, tasks)
        clock.now = 6.25
        refused: list[GatewayError] = []
        try:
            async with admission.slot():
                pass
        except GatewayError as error:
            refused.append(error)
        assert refused and refused[0].kind is Kind.OVERLOADED and "95 already wait" in str(refused[0])
        assert refused[0].retry_after is not None and refused[0].retry_after >= 1
        # Drop the room to one waiter (the rest give up), then arrive again: it waits.
        for task in tasks[:-1]:
            task.cancel()
        await settle()
        assert admission.waiting == 1 and admission.overloaded()
        tasks += await _queue(admission, 1, served, outcomes, start=len(tasks))
        await settle()
        assert admission.waiting == 2 and len(tasks) - 1 not in outcomes
        release.set()
        await asyncio.gather(*holders, *tasks, return_exceptions=True)
        return served

    served = asyncio.run(scenario())
    assert served == [94, 95]  # in order: the one left of the room, then the newcomer


def test_with_a_latency_target_overload_serves_only_requests_that_find_a_slot_free():
    """A waiter would add up to a whole call to its latency, which a latency target forbids: once overload
    is told from a burst, a newcomer is refused at once unless a slot is free, and the waiters left from the
    burst allowance are all shed (a bounded number per turn of the event loop), with no further arrival
    needed to shed them."""

    async def scenario():
        clock = FakeClock()
        admission = Admission(
            max_in_flight=2,
            max_waiting=10_000,
            queue_timeout=60.0,
            burst_seconds=5.0,
            latency_ratio=2.0,
            clock=clock,
        )
        await _serve_quickly(admission, clock, 40, 0.025)
        admission.latency.value = 2.0
        release = asyncio.Event()
        holders = [asyncio.create_task(_hold(admission, release)) for _ in range(2)]
        await asyncio.sleep(0)
        served, outcomes, tasks = [], {}, []
        await _arrive(admission, clock, 5.75, served, outcomes, tasks)
        waited = len(tasks)
        clock.now = 6.25
        tasks += await _queue(admission, 1, served, outcomes, start=len(tasks))
        await settle()
        assert admission.overloaded()
        assert outcomes[waited] is Kind.OVERLOADED  # refused at once, every slot taken
        assert 0 < admission.waiting < waited  # shed a few at a time
        for _ in range(waited // SHED_PER_ARRIVAL):
            await settle()
        assert admission.waiting == 0  # without the latency target the room keeps one round, 2
        assert all(outcomes[index] is Kind.OVERLOADED for index in range(waited))
        release.set()
        await asyncio.gather(*holders, *tasks)
        # A slot is free now: the next arrival takes it, still under overload.
        tasks += await _queue(admission, 1, served, outcomes, start=len(tasks))
        await asyncio.gather(*tasks)
        assert admission.overloaded()
        return served, outcomes, admission

    served, outcomes, admission = asyncio.run(scenario())
    assert served == [len(outcomes) - 1]  # the one that found a slot free
    assert sum(outcome is Kind.OVERLOADED for outcome in outcomes.values()) == len(outcomes) - 1
    assert admission.waiting == 0 and admission.in_flight == 0


def test_overload_lasts_while_arrivals_outpace_completions_through_a_second_without_arrivals():
    async def scenario():
        clock, admission, release, holders = await _busy(1)
        served, outcomes, tasks = [], {}, []
        await _arrive(admission, clock, 7.5, served, outcomes, tasks)
        await settle()
        waiting = admission.waiting
        assert admission.overloaded() and 0 < waiting < len(tasks)  # the later arrivals refused
        # The client falters for a second (a load generator starved of CPU): still overloaded.
        clock.now = 8.5
        assert admission.overloaded()
        await _arrive(admission, clock, 9.5, served, outcomes, tasks)
        await settle()
        assert admission.overloaded() and admission.waiting == waiting
        # The waiters give up but one; the bound grows: the room empties and a slot is free for a moment.
        # Still overloaded.
        for task in [task for task in tasks if not task.done()][1:]:
            task.cancel()
        admission.max_in_flight = 3
        release.set()
        await asyncio.gather(*holders, *tasks, return_exceptions=True)
        assert served == [0] and admission.waiting == 0 and admission.in_flight == 0
        assert admission.overloaded()
        clock.now = 13.0  # three seconds and more without arrivals: over
        assert not admission.overloaded()

    asyncio.run(scenario())


def test_a_closed_loop_of_clients_is_served_in_order_and_never_shed():
    """64 clients, each sending its next request when answered, 2 slots: the room stays at 62 for good.
    That is no overload however long it lasts, and in order, or the oldest would never be served."""

    async def scenario():
        clock = FakeClock()
        admission = Admission(
            max_in_flight=2, max_waiting=10_000, queue_timeout=600.0, burst_seconds=5.0, clock=clock
        )
        waits: list[tuple[float, float]] = []  # (asked at, waited)
        stop = 30.0

        async def client() -> None:
            while clock.now < stop:
                asked = clock.now
                async with admission.slot():
                    waits.append((asked, clock.now - asked))
                    clock.now += 0.005  # each call 5 ms of fake time: 2 at once, 400/s
                    await asyncio.sleep(0)

        await asyncio.gather(*(client() for _ in range(64)))
        return waits, admission

    waits, admission = asyncio.run(scenario())
    assert admission.shed_overload == 0 and not admission.overloaded()
    # A turn every 62 / 400 s, give or take: nobody starves. (While the 64 first arrive the room grows:
    # newest first for a second.)
    assert len(waits) > 5000 and max(wait for asked, wait in waits if asked > 2.0) < 0.5
    assert max(wait for _, wait in waits) < 2.0


def test_a_burst_is_served_whole_even_when_it_takes_longer_than_the_burst_allowance():
    async def scenario():
        clock = FakeClock()
        admission = Admission(
            max_in_flight=2, max_waiting=10_000, queue_timeout=300.0, burst_seconds=5.0, clock=clock
        )
        release = asyncio.Event()
        holders = [asyncio.create_task(_hold(admission, release)) for _ in range(2)]
        await asyncio.sleep(0)
        served, outcomes = [], {}

        async def request(index: int) -> None:
            try:
                async with admission.slot():
                    clock.now += 0.05  # each call takes 50 ms: 200 calls, 2 at a time, ~5 s
                    await asyncio.sleep(0)
                    served.append(index)
                outcomes[index] = "served"
            except GatewayError as error:
                outcomes[index] = error.kind

        burst = [asyncio.create_task(request(index)) for index in range(200)]
        await asyncio.sleep(0)
        clock.now = 10.0  # the burst has waited past the allowance, but nothing new arrives
        release.set()
        await asyncio.sleep(0)
        straggler = asyncio.create_task(request(200))  # one arrival while it drains is not overload
        await asyncio.gather(*holders, *burst, straggler)
        return served, outcomes, admission

    served, outcomes, admission = asyncio.run(scenario())
    assert sorted(served) == list(range(201)), {k: v for k, v in outcomes.items() if v != "served"}
    assert admission.shed_overload == 0 and admission.waiting == 0 and admission.in_flight == 0


def test_after_triton_refused_for_load_a_newcomer_without_a_free_slot_is_refused_at_once():
    """Triton's steps refuse by expected wait: the work at Triton already fills its queue timeout. For a
    moment after, a newcomer that finds every slot taken is refused at once instead of held for the burst
    allowance; one that finds a slot free is served, what already waits stays, and once the moment has
    passed newcomers wait again."""

    async def scenario():
        clock = FakeClock()
        admission = Admission(
            max_in_flight=1, max_waiting=10_000, queue_timeout=300.0, burst_seconds=5.0, clock=clock
        )
        release = asyncio.Event()
        holder = asyncio.create_task(_hold(admission, release))
        await asyncio.sleep(0)
        served, outcomes = [], {}
        tasks = await _queue(admission, 1, served, outcomes)  # waits (no refusal yet)
        admission.backend_refused()
        clock.now += BACKEND_REFUSAL_SECONDS / 2
        tasks += await _queue(admission, 1, served, outcomes, start=1)
        await settle()
        assert outcomes == {1: Kind.OVERLOADED} and admission.waiting == 1  # refused with no wait
        clock.now += BACKEND_REFUSAL_SECONDS
        tasks += await _queue(admission, 1, served, outcomes, start=2)
        await settle()
        assert admission.waiting == 2 and 2 not in outcomes  # the moment passed: it waits
        release.set()
        await asyncio.gather(holder, *tasks)
        admission.backend_refused()
        await asyncio.gather(*await _queue(admission, 1, served, outcomes, start=3))  # a slot is free
        return served, outcomes, admission

    served, outcomes, admission = asyncio.run(scenario())
    assert sorted(served) == [0, 2, 3] and outcomes[1] is Kind.OVERLOADED
    assert admission.waiting == 0 and admission.in_flight == 0
