"""Admission by expected wait (backend.admission, backend.backpressure.QueueGate.wait_refusal): the service
rate the model step measures, and the preprocess step refusing at once what would wait past the budget.
Every time is passed in, so nothing here depends on how busy the machine is."""

from __future__ import annotations

import numpy as np
import pytest

from backend import backpressure
from backend.admission import (
    FULL_WEIGHT_TOKENS,
    MEDIA,
    MIN_SAMPLES,
    TEXT,
    ServiceRate,
    expected_wait,
    expected_wait_of,
    split_spell,
)
from backend.errors import UnavailableError
from backend.protocol import QUEUED_AT


def test_no_rate_no_refusal_a_cold_server_admits_everything():
    rate = ServiceRate()
    assert rate.per_second() is None
    for index in range(MIN_SAMPLES - 1):
        rate.done(1000, index, index + 1.0)
        assert rate.per_second() is None
    assert expected_wait(10**9, rate.per_second()) is None
    assert expected_wait(10**9, None) is None
    rate.done(1000, 10.0, 11.0)
    assert rate.per_second() == pytest.approx(1000.0)


def test_the_rate_is_tokens_over_busy_time_and_follows_a_change():
    rate = ServiceRate(smoothing=0.5)
    full = FULL_WEIGHT_TOKENS
    for step in range(MIN_SAMPLES):
        rate.done(full, step * 10.0, step * 10.0 + full / 1000)  # idle between forwards: not counted
    assert rate.per_second() == pytest.approx(1000.0)
    # The server slows down to 250 tokens/s: the estimate follows within a few forwards.
    start = 100.0
    for _ in range(8):
        rate.done(full, start, start + full / 250)
        start += full / 250
    assert rate.per_second() == pytest.approx(250.0, rel=0.02)


def test_a_few_tokens_that_waited_long_hardly_move_the_rate():
    """26 tokens answered after 0.7 s (they waited behind another instance's video) once took the rate from
    ~5,000 to 277 tokens/s and 4,400 tokens queued next were refused as 15.8 s of work."""
    rate = ServiceRate()
    start = 0.0
    for _ in range(200):  # short texts answered at 5,000 tokens/s
        rate.done(50, start, start + 0.01)
        start += 0.01
    assert rate.per_second() == pytest.approx(5000.0)
    rate.done(26, start, start + 0.708)
    slowed = rate.per_second()
    assert slowed is not None and slowed > 2500.0
    assert expected_wait(4400, slowed) < 10.0
    # What keeps being slow still brings the rate down: the work ahead is then measured by it.
    for _ in range(1000):
        start += 0.708
        rate.done(26, start - 0.708, start)
    assert rate.per_second() == pytest.approx(26 / 0.708, rel=0.05)


def test_overlapping_forwards_count_busy_time_once():
    """Two lanes: a forward that overlaps the previous one counts only the time after it finished."""
    rate = ServiceRate(smoothing=0.5)
    rate.done(100, 0.0, 1.0)
    rate.done(100, 0.5, 1.5)  # 0.5 s of its own
    rate.done(100, 1.0, 1.2)  # finished inside: no time of its own, its tokens still count
    assert rate.seconds > 0
    assert rate.per_second() is not None and rate.per_second() > 100 / 1.0


def _measured(tokens_per_second: float) -> ServiceRate:
    rate = ServiceRate()
    for second in range(MIN_SAMPLES):
        rate.done(int(tokens_per_second), second, second + 1.0)
    return rate


def test_each_kind_waits_at_its_own_rate_and_an_unmeasured_kind_refuses_nothing():
    rates = {TEXT: _measured(4000.0), MEDIA: _measured(500.0)}
    assert expected_wait_of({TEXT: 8000, MEDIA: 1000}, rates) == pytest.approx(2.0 + 2.0)
    assert expected_wait_of({TEXT: 0, MEDIA: 0}, rates) == 0.0
    assert expected_wait(-5, 100.0) == 0.0
    # Media work measured, text not yet: text ahead has no estimate, so nothing is refused for it.
    cold = {TEXT: ServiceRate(), MEDIA: _measured(500.0)}
    assert expected_wait_of({TEXT: 10**9, MEDIA: 0}, cold) is None
    assert expected_wait_of({TEXT: 0, MEDIA: 1000}, cold) == pytest.approx(2.0)


def test_a_spell_that_answered_both_kinds_is_shared_by_their_cost():
    rates = {TEXT: _measured(4000.0), MEDIA: _measured(500.0)}
    # 4,000 text tokens cost 1 s at their rate, 500 media tokens 1 s: 3 s shared half and half.
    assert split_spell({TEXT: 4000, MEDIA: 500}, rates, 3.0) == pytest.approx({TEXT: 1.5, MEDIA: 1.5})
    assert split_spell({TEXT: 4000, MEDIA: 500}, {TEXT: ServiceRate(), MEDIA: rates[MEDIA]}, 3.0) is None
    # One kind answered: the whole spell is its own, measured rate or not.
    assert split_spell({TEXT: 0, MEDIA: 500}, {TEXT: ServiceRate(), MEDIA: ServiceRate()}, 3.0) == {
        MEDIA: 3.0
    }


def _gate(tmp_path, clock):
    path = tmp_path / "channel"
    publisher = backpressure.Publisher(path, clock=lambda: clock[0])
    publisher.busy()  # inside an execute(): what waits, waits for it
    gate = backpressure.QueueGate(path, limit=1000, clock=lambda: clock[0], rate_smoothing=0.5)
    return publisher, gate


SECOND = 10**9


def _answer(publisher, gate, clock, upto, seconds, oldest=0):
    """`seconds` pass, the model step has taken everything stamped up to `upto` and answered all of it but
    `oldest` and what came after."""
    clock[0] += int(seconds * SECOND)
    publisher.taken(upto)
    publisher.progress(oldest, clock[0])
    return gate.admit(1)


def test_the_gate_measures_how_fast_its_requests_are_answered(tmp_path):
    """Samples span from the first request handed on (or the previous sample) to the model step's last
    answer; idle time is in none."""
    clock = [1000 * SECOND]
    publisher, gate = _gate(tmp_path, clock)
    start = clock[0] + 1
    for index in range(10):
        gate.handed_on(start + index, tokens=1000)
    for answered in range(2, 12, 2):  # two requests (2,000 tokens) answered every 0.5 s: 4,000 tokens/s
        _answer(publisher, gate, clock, start + answered - 1, 0.5)
    assert gate.rates[TEXT].samples == 5 and gate.rates[TEXT].per_second() == pytest.approx(4000.0)
    assert gate.tokens_ahead() == 0
    # Idle for an hour, then one request answered 10 ms after it was handed on, seen a minute later:
    # the sample is those 10 ms, not the hour or the minute.
    clock[0] += 3600 * SECOND
    gate.handed_on(clock[0], tokens=80)  # 8,000 tokens/s
    clock[0] += SECOND // 100
    publisher.taken(clock[0] - SECOND // 100)
    publisher.progress(0, clock[0])
    clock[0] += 60 * SECOND
    gate.admit(1)
    # Sums of tokens and seconds, decayed by smoothing x (sample tokens / FULL_WEIGHT_TOKENS, at most 1).
    tokens, seconds = 0.0, 0.0
    for sample_tokens, sample_seconds in [(2000, 0.5)] * 5 + [(80, 0.01)]:
        keep = 1 - 0.5 * min(1.0, sample_tokens / FULL_WEIGHT_TOKENS)
        tokens, seconds = keep * tokens + sample_tokens, keep * seconds + sample_seconds
    assert gate.rates[TEXT].samples == 6 and gate.rates[TEXT].per_second() == pytest.approx(tokens / seconds)
    assert gate.rates[TEXT].per_second() == pytest.approx(4000.0, rel=0.02)


def test_taken_but_not_answered_still_counts_for_the_wait_not_for_the_count(tmp_path):
    clock = [1000 * SECOND]
    publisher, gate = _gate(tmp_path, clock)
    gate.limit = 3
    start = clock[0] + 1
    for index in range(5):
        gate.handed_on(start + index, tokens=100)
    # Taken up to the third, the second not answered yet: 2 wait (count), 4 unanswered (wait).
    assert _answer(publisher, gate, clock, start + 2, 0.1, oldest=start + 1) == 1
    assert gate.tokens_ahead() == 400
    # A model step that lost track of a request (its oldest unanswered older than FORGET_SECONDS) no longer
    # holds the others back.
    clock[0] += int(backpressure.FORGET_SECONDS * SECOND) // 2
    gate.handed_on(clock[0], tokens=100)
    clock[0] += int(backpressure.FORGET_SECONDS * SECOND) // 2 + SECOND
    publisher.taken(clock[0] - SECOND)
    publisher.progress(start + 1, clock[0])
    gate.admit(1)
    assert gate.tokens_ahead() == 0
    gate.close()
    publisher.close()


def test_the_gate_refuses_by_expected_wait_once_a_rate_is_measured(tmp_path):
    clock = [1000 * SECOND]
    publisher, gate = _gate(tmp_path, clock)
    assert gate.admit(10) == 10  # nothing published: nothing refused
    start = clock[0] + 1
    for index in range(40):
        gate.handed_on(start + index, tokens=1000)
    # Budget 5 s, but no rate yet: a cold server admits everything, however much is queued.
    publisher.budget(5.0)
    gate.admit(1)
    assert gate.tokens_ahead() == 40_000 and gate.wait_refusal() is None
    for answered in range(MIN_SAMPLES):  # 2 requests a second: 2,000 tokens/s
        _answer(publisher, gate, clock, start + 2 * answered + 1, 1.0)
    assert gate.rates[TEXT].per_second() == pytest.approx(2000.0)
    # 34 unanswered, 17 s of work: over the 5 s budget.
    refusal = gate.wait_refusal()
    assert isinstance(refusal, UnavailableError)
    message = str(refusal)
    assert "overloaded" in message and "retry" in message and "expected wait 17.0 s" in message
    assert gate.refused_by_wait == 1
    # All but the last 3 answered (at the same rate): 1.5 s of work.
    _answer(publisher, gate, clock, start + 36, 15.5)
    assert gate.tokens_ahead() == 3000 and gate.rates[TEXT].per_second() == pytest.approx(2000.0)
    assert gate.wait_refusal() is None
    # Requests handed on in the same execute() count before the next admit().
    gate.handed_on(start + 40, tokens=10_000)
    assert isinstance(gate.wait_refusal(), UnavailableError)
    # A model step that publishes no budget (expected_wait_share 0) refuses nothing by wait.
    publisher.budget(0.0)
    gate.admit(1)
    assert gate.wait_refusal() is None
    # Gone (unloaded): nothing refused, nothing remembered.
    publisher.close()
    assert gate.admit(3) == 3 and gate.tokens_ahead() == 0 and gate.wait_refusal() is None
    gate.close()


def test_a_model_step_of_the_previous_release_16_byte_channel_is_still_read(tmp_path):
    clock = [1000 * SECOND]
    path = tmp_path / "channel"
    path.write_bytes((clock[0]).to_bytes(8, "little") + (0).to_bytes(8, "little"))
    gate = backpressure.QueueGate(path, limit=2, clock=lambda: clock[0])
    gate.handed_on(clock[0] + 1, tokens=10**9)
    assert gate.admit(5) == 1 and gate.wait_refusal() is None
    gate.close()


def test_the_preprocess_step_refuses_by_wait_before_preparing(tmp_path):
    """The refusal comes before any tokenising: prepare_request is not called for a refused request."""
    from backend.protocol import PreparedItem
    from backend.steps import preprocess_requests

    prepared: list[int] = []

    class Preprocessor:
        def prepare_request(self, inputs):
            prepared.append(int(inputs["N"][0]))
            return [PreparedItem(input_ids=np.arange(3000, dtype=np.int64))]

        def pack(self, rows):
            return {"INPUT_IDS": np.stack([r.input_ids for r in rows])}

    clock = [1000 * SECOND]
    publisher, gate = _gate(tmp_path, clock)
    publisher.budget(5.0)  # 5 s of work at most
    for second in range(MIN_SAMPLES):
        gate.rates[TEXT].done(1000, second, second + 1.0)  # 1,000 tokens/s
    results = preprocess_requests(Preprocessor(), [{"N": np.array([n])} for n in range(4)], gate)
    # Each admitted request adds 3,000 tokens: 0 and 3,000 ahead are within 5 s, 6,000 is not.
    assert prepared == [0, 1]
    assert [isinstance(result, UnavailableError) for result in results] == [False, False, True, True]
    publisher.close()
    gate.close()


def test_the_model_step_publishes_its_budget_and_what_it_has_answered(tmp_path):
    """The oldest stamp taken and not answered, and when the last answer came; a request refused for its
    queue timeout or without QUEUED_AT is not tracked."""
    import struct

    from backend.protocol import QUEUED_AT, PreparedItem
    from backend.runtime.batching import BatchLimits
    from backend.runtime.worker import StepWorker
    from tests.drivers import FunctionHead

    def unpack(inputs):
        return [PreparedItem(input_ids=np.arange(int(inputs["N"][0]), dtype=np.int64))]

    def compute(rows):
        return [np.zeros(1, dtype=np.float32) for _ in rows]

    def respond(rows, outputs):
        return {"OUT": np.stack(outputs)}

    limits = BatchLimits(token_budget=4096, max_rows=8, vision_patch_budget=1, batch_overhead_tokens=0)
    head = FunctionHead(unpack, compute, respond, limits, queue_timeout_seconds=10.0)
    path = tmp_path / "channel"
    worker = StepWorker(head, publisher=backpressure.Publisher(path), expected_wait_share=0.5)
    bound = worker.queue_bound
    now = bound.clock()

    def request(stamp):
        inputs = {"N": np.array([100])}
        if stamp is not None:
            inputs[QUEUED_AT] = np.array([[stamp]], dtype=np.int64)
        return (inputs, lambda result: None, lambda: False)

    try:
        worker.submit([request(now - 5), request(now - 30 * SECOND), request(None)])
        oldest, answered_at = struct.unpack("<qq", path.read_bytes()[16:32])
        [budget] = struct.unpack("<d", path.read_bytes()[32:40])
        assert (oldest, budget) == (0, 5.0) and answered_at >= now
        # Unanswered: the oldest is published.
        held = bound.answered({QUEUED_AT: np.array([[now - 3]], dtype=np.int64)}, lambda result: None)
        later = bound.answered({QUEUED_AT: np.array([[now - 2]], dtype=np.int64)}, lambda result: None)
        later({})
        assert struct.unpack("<qq", path.read_bytes()[16:32])[0] == now - 3
        held({})
        assert struct.unpack("<qq", path.read_bytes()[16:32])[0] == 0
    finally:
        worker.close()
    off = tmp_path / "off"
    worker = StepWorker(head, publisher=backpressure.Publisher(off))  # share 0: nothing tracked
    try:
        worker.submit([request(now)])
        assert path.exists() is False and off.read_bytes()[16:40] == bytes(24)
    finally:
        worker.close()


@pytest.mark.parametrize(
    "message",
    [
        "in ensemble 'qwen3_vl_embedding', the model step is overloaded (expected wait 12.0 s for the work "
        "queued ahead of this request, over 5 s); retry later",
        "in ensemble 'qwen3_vl_embedding', the model step is overloaded (256 requests from this preprocess "
        "instance wait for it); retry later",
        "in ensemble 'qwen3_vl_embedding', waited 12.0 s for the model step, over its queue timeout of 10 s: "
        "the server is overloaded; retry later",
    ],
)
def test_an_overload_refusal_is_answered_at_once_not_waited_out_as_a_restart(message):
    """The gateway passes the steps' refusals on as 503 at once, and the client retries them with its usual
    backoff: neither takes them for a server restarting (which both wait out for up to a minute). Sent again
    by the gateway, a request refused for its expected wait only comes back later, and served last (its
    admission serves the newest first under overload): measured, admitted long texts waited 137 s."""
    from tritonclient.utils import InferenceServerException

    from gateway.errors import Kind
    from gateway.triton_errors import kind_of, reloading
    from qwen3vl_client._retry import is_down, is_unavailable

    error = InferenceServerException(message, status="StatusCode.UNAVAILABLE")
    assert not reloading(error)
    assert not is_down(error, (ConnectionError,))
    assert is_unavailable(error, (ConnectionError,))
    assert kind_of(error) is Kind.UNAVAILABLE  # 503 + Retry-After, as before
    # A server that does not answer is still down.
    assert is_down(InferenceServerException("failed to connect", status="StatusCode.UNAVAILABLE"), ())


def test_a_call_triton_refused_is_no_completion_for_the_gateway():
    """Counted as completions, Triton's fast refusals would read as service: the measured rate would grow
    with the refusals and arrivals would never outpace completions, so sustained overload would never be
    told from a burst (waiters held for the whole queue timeout)."""
    import asyncio

    from gateway.admission import Admission
    from gateway.errors import GatewayError, Kind

    clock = [0.0]
    admission = Admission(4, 100, queue_timeout=10.0, clock=lambda: clock[0])

    async def run():
        for _ in range(30):
            with pytest.raises(GatewayError):
                async with admission.slot():
                    raise GatewayError(Kind.OVERLOADED, "Triton: the model step is overloaded; retry later")
        assert admission._completed == 0 and admission.rate() is None
        for _ in range(30):
            async with admission.slot() as ticket:
                ticket.sample = ticket.served = False  # refused, sent again by the caller
        assert admission._completed == 0
        for _ in range(25):
            clock[0] += 0.1
            async with admission.slot():
                pass
        assert admission._completed == 25 and admission.rate() is not None
        with pytest.raises(GatewayError):
            async with admission.slot():
                raise GatewayError(Kind.INVALID, "input[0]: bad")  # answered by Triton: a completion
        assert admission._completed == 26
        assert admission.in_flight == 0

    asyncio.run(run())


def test_a_sample_ends_when_the_watcher_saw_the_answer_not_at_a_later_answer_of_another_instance(tmp_path):
    """The model step's last answer moves on with other instances' requests; a request of ours answered
    early and seen only at our next execute() would count their seconds as ours (a burst was refused with
    "expected wait 67 s" for 2 s of work). poll() between execute()s ends the sample when it was seen."""
    clock = [1000 * SECOND]
    publisher, gate = _gate(tmp_path, clock)
    stamp = clock[0]
    gate.handed_on(stamp, tokens=1000)
    clock[0] += SECOND // 10
    publisher.taken(stamp)
    publisher.progress(0, clock[0])  # ours answered after 0.1 s
    clock[0] += SECOND // 100
    gate.poll()
    assert gate.tokens_ahead() == 0 and gate.rates[TEXT].samples == 1
    assert gate.rates[TEXT].seconds == pytest.approx(0.1)
    clock[0] += 5 * SECOND
    publisher.progress(0, clock[0])  # another instance's request answered 5 s later
    assert gate.admit(1) == 1
    assert gate.rates[TEXT].samples == 1 and gate.rates[TEXT].seconds == pytest.approx(0.1)
    gate.close()
    publisher.close()


def test_the_watcher_polls_between_executes_and_stops_at_close(tmp_path):
    import time

    path = tmp_path / "channel"
    publisher = backpressure.Publisher(path)
    publisher.busy()
    publisher.budget(5.0)  # without one (expected wait off) the watcher polls once a second
    gate = backpressure.QueueGate(path, limit=10, watch_seconds=0.005)
    gate.admit(0)  # execute() reads the channel, its budget among it
    stamp = time.monotonic_ns()
    gate.handed_on(stamp, tokens=500)
    publisher.taken(stamp)
    publisher.progress(0, time.monotonic_ns())
    deadline = time.monotonic() + 5.0
    while gate.tokens_ahead() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert gate.tokens_ahead() == 0 and gate.rates[TEXT].samples == 1  # no execute() ran: the watcher saw it
    gate.close()
    assert gate._watcher is not None and not gate._watcher.is_alive()
    publisher.close()


def test_a_request_taken_and_not_answered_is_not_counted_answered(tmp_path):
    """The model step publishes a taken request as unanswered before it publishes it taken: read between the
    two, a request looked answered at the previous answer's time, before it was sent, and the sample was
    lost (the fresh-clone CI's expected-wait test saw no refusal: one sample from a 6-request warm-up)."""
    clock = [1000 * SECOND]
    path = tmp_path / "channel"
    publisher = backpressure.Publisher(path, clock=lambda: clock[0])
    bound = backpressure.QueueBound(10.0, publisher, clock=lambda: clock[0], wait_share=1.0)
    gate = backpressure.QueueGate(path, limit=10, clock=lambda: clock[0])
    answers = []
    for _ in range(2):
        clock[0] += SECOND // 100
        stamp = clock[0]
        gate.handed_on(stamp, tokens=2000)
        inputs = {QUEUED_AT: np.array([[stamp]], dtype=np.int64)}
        assert bound.refusal(inputs) is None
        answer = bound.answered(inputs, answers.append)
        bound.taken()
        gate.poll()  # taken, not answered: still ahead
        assert gate.tokens_ahead() == 2000
        clock[0] += SECOND // 10
        answer("done")
        gate.poll()
        assert gate.tokens_ahead() == 0
    text = gate.rates[TEXT]
    assert text.samples == 2 and text.tokens / text.seconds == pytest.approx(20_000)
    gate.close()
    publisher.close()


def test_text_after_media_work_is_not_judged_at_the_media_rate(tmp_path):
    """A bulk job's images, then live texts (test_bulk_priority after the index job): one rate for both
    refused the texts ("expected wait 10.2 s" for about a second of work). Each kind has its own rate; text
    waits at the text rate once it is measured, and nothing is refused for text before."""
    clock = [1000 * SECOND]
    publisher, gate = _gate(tmp_path, clock)
    publisher.budget(5.0)
    start = clock[0] + 1
    for index in range(2 * MIN_SAMPLES):  # images: 1,000 tokens answered per second (slow per token)
        gate.handed_on(start + index, tokens=500, kind=MEDIA)
    for answered in range(MIN_SAMPLES):
        _answer(publisher, gate, clock, start + 2 * answered + 1, 1.0)
    assert gate.rates[MEDIA].per_second() == pytest.approx(1000.0) and gate.rates[TEXT].per_second() is None
    # 20,000 text tokens ahead: 20 s at the media rate, but text has no rate yet: admitted.
    text_start = clock[0] + 1
    for index in range(20):
        gate.handed_on(text_start + index, tokens=1000, kind=TEXT)
    gate.admit(1)
    assert gate.tokens_ahead() == 20_000 and gate.wait_refusal() is None
    for answered in range(MIN_SAMPLES):  # texts: 2 answered every 0.1 s, 20,000 tokens/s
        _answer(publisher, gate, clock, text_start + 2 * answered + 1, 0.1)
    assert gate.rates[TEXT].per_second() == pytest.approx(20_000.0)
    assert gate.rates[MEDIA].per_second() == pytest.approx(1000.0)  # untouched by the text samples
    # 14,000 text tokens ahead: 0.7 s at the text rate, within the budget.
    assert gate.tokens_ahead() == 14_000 and gate.wait_refusal() is None
    # 6,000 media tokens more: 6 s at the media rate on top: refused.
    gate.handed_on(text_start + 20, tokens=6000, kind=MEDIA)
    refusal = gate.wait_refusal()
    assert isinstance(refusal, UnavailableError) and "expected wait 6.7 s" in str(refusal)
    # One spell that answered both kinds: shared by what each costs at its rate (0.7 s text, 6 s media).
    before = {kind: rate.samples for kind, rate in gate.rates.items()}
    _answer(publisher, gate, clock, text_start + 20, 6.7)
    assert {kind: rate.samples - before[kind] for kind, rate in gate.rates.items()} == {TEXT: 1, MEDIA: 1}
    assert gate.rates[TEXT].per_second() == pytest.approx(20_000.0)
    assert gate.rates[MEDIA].per_second() == pytest.approx(1000.0)
    publisher.close()
    gate.close()
