"""The model step's queue (backend.runtime.scheduler, its worker backend.runtime.worker, its bound
backend.backpressure) without a model or a server: which micro-batch runs next, when each request is
answered, and how failures, cancellations and shutdown reach single requests."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest

from backend.errors import CancelledError, UnavailableError
from backend.protocol import PreparedItem
from backend.runtime.batching import BatchLimits
from backend.runtime.scheduler import MicroBatchQueue
from backend.runtime.worker import StepWorker
from backend.wire import unpack_rows
from tests.drivers import FunctionHead

# Rows of 900 tokens each fill a micro-batch: heavy items run one per forward, as videos do.
LIMITS = BatchLimits(token_budget=1000, max_rows=8, vision_patch_budget=10_000)


def row(length: int, tag: int) -> PreparedItem:
    """A row whose first token id is `tag`, so that an output can name the row it came from."""
    ids = np.full(length, 7, dtype=np.int64)
    ids[0] = tag
    return PreparedItem(input_ids=ids)


def respond(rows, outputs) -> dict[str, np.ndarray]:
    return {
        "TAGS": np.array([int(output[0]) for output in outputs]),
        "LENGTHS": np.array([r.length for r in rows]),
    }


def tagged(length: int, tag: int) -> dict[str, np.ndarray]:
    """One request's inputs for `unpack_tagged`: a row of `length` tokens named `tag`."""
    return {"LENGTH": np.array([length]), "TAG": np.array([tag])}


def unpack_tagged(inputs) -> list[PreparedItem]:
    return [row(int(inputs["LENGTH"][0]), int(inputs["TAG"][0]))]


def tag_outputs(items) -> list[np.ndarray]:
    """compute()'s outputs: each row's tag."""
    return [np.array([item.input_ids[0]], dtype=np.float32) for item in items]


class SenderAnswers:
    """Answers that come through response senders: each must be a result, not an error; `done` is set once
    `expected` of them came."""

    def __init__(self, expected: int):
        self.expected = expected
        self.names: list = []
        self.done = threading.Event()

    def sender(self, name):
        def deliver(result):
            assert not isinstance(result, Exception), result
            self.names.append(name)
            if len(self.names) == self.expected:
                self.done.set()

        return deliver


class Recorder:
    """compute() that remembers each micro-batch's tags; answers in the order they came."""

    def __init__(self, on_compute=None):
        self.batches: list[list[int]] = []
        self.answers: list[tuple[str, object]] = []
        self.on_compute = on_compute

    def compute(self, items: list[PreparedItem]) -> list[np.ndarray]:
        self.batches.append([int(item.input_ids[0]) for item in items])
        if self.on_compute:
            self.on_compute(self, items)
        return [np.array([item.input_ids[0], item.length], dtype=np.float32) for item in items]

    def answer(self, name: str):
        return lambda result: self.answers.append((name, result))

    def queue(self, limits: BatchLimits = LIMITS) -> MicroBatchQueue:
        return MicroBatchQueue(FunctionHead(unpack_rows, self.compute, respond, limits))


def drain(queue: MicroBatchQueue) -> int:
    steps = 0
    while queue.run_next():
        steps += 1
    return steps


def test_a_short_request_queued_behind_heavy_ones_runs_first_and_is_answered_first():
    recorder = Recorder()
    queue = recorder.queue()
    for tag in (1, 2, 3):
        queue.add([row(900, tag)], recorder.answer(f"video{tag}"))
    queue.add([row(12, 9)], recorder.answer("text"))
    assert queue.run_next()
    assert recorder.batches == [[9]]
    assert [name for name, _ in recorder.answers] == ["text"]  # answered before any video ran
    drain(queue)
    assert sorted(recorder.batches[1:]) == [[1], [2], [3]]
    assert [name for name, _ in recorder.answers][0] == "text" and len(recorder.answers) == 4


def test_a_text_arriving_during_a_heavy_forward_runs_right_after_it():
    def arrive_once(recorder, items):
        if len(recorder.batches) == 1:  # while the first heavy micro-batch runs
            queue.add([row(12, 9)], recorder.answer("text"))

    recorder = Recorder(arrive_once)
    queue = recorder.queue()
    queue.add([row(900, 1)], recorder.answer("video1"))
    assert queue.run_next()
    queue.add([row(900, 2)], recorder.answer("video2"))  # queued before the text's turn comes
    drain(queue)
    assert recorder.batches == [[1], [9], [2]]


def test_heavy_rows_are_not_starved_by_a_stream_of_short_ones():
    def another_text(recorder, items):
        if len(recorder.batches) < 500:
            queue.add([row(12, 9)], recorder.answer("text"))

    recorder = Recorder(another_text)
    queue = recorder.queue()
    queue.add([row(12, 9)], recorder.answer("text"))
    queue.add([row(900, 1)], recorder.answer("video"))
    for _ in range(40):
        queue.run_next()
    # Each short forward (12 + 128 overhead tokens) raises the video's ratio; within its own cost in
    # tokens of work (~1028 / 140 = 8 forwards) it overtakes the newest text.
    assert [1] in recorder.batches[:10], recorder.batches[:10]


def test_each_request_gets_its_rows_outputs_in_order_across_micro_batches():
    recorder = Recorder()
    queue = recorder.queue()
    queue.add([row(900, 1), row(10, 2), row(500, 3)], recorder.answer("mixed"))
    queue.add([row(11, 4)], recorder.answer("text"))
    drain(queue)
    assert len(recorder.batches) == 3  # 900 and 500 cannot share a 1,000-token micro-batch
    results = dict(recorder.answers)
    assert results["mixed"]["TAGS"].tolist() == [1, 2, 3]
    assert results["mixed"]["LENGTHS"].tolist() == [900, 10, 500]
    assert results["text"]["TAGS"].tolist() == [4]
    # The short rows of both requests shared the first micro-batch; the 3-row request is answered last.
    assert sorted(recorder.batches[0]) == [2, 4]
    assert [name for name, _ in recorder.answers] == ["text", "mixed"]


def test_a_failing_micro_batch_is_retried_request_by_request_and_fails_only_the_poisonous_one():
    def poison(recorder, items):
        if any(item.input_ids[0] == 66 for item in items):
            raise RuntimeError("boom")

    recorder = Recorder(poison)
    queue = recorder.queue()
    queue.add([row(10, 1)], recorder.answer("good"))
    queue.add([row(10, 66), row(900, 67)], recorder.answer("bad"))
    drain(queue)
    results = dict(recorder.answers)
    assert results["good"]["TAGS"].tolist() == [1]
    assert isinstance(results["bad"], RuntimeError)
    assert [67] not in recorder.batches  # the failed request's other rows never run
    assert recorder.batches == [[1, 66], [1], [66]]


def test_cancelled_requests_are_answered_without_running_their_remaining_rows(monkeypatch):
    from backend.runtime import scheduler

    monkeypatch.setattr(scheduler, "CANCEL_CHECK_SECONDS", 0.0)  # read at every micro-batch here
    cancelled = {"flag": False}

    def cancel_after_first(recorder, items):
        cancelled["flag"] = True

    recorder = Recorder(cancel_after_first)
    queue = recorder.queue()
    queue.add([row(10, 1), row(900, 2)], recorder.answer("gone"), lambda: cancelled["flag"])
    queue.add([row(900, 3)], recorder.answer("kept"))
    drain(queue)
    results = dict(recorder.answers)
    assert isinstance(results["gone"], CancelledError)
    assert results["kept"]["TAGS"].tolist() == [3]
    assert recorder.batches == [[1], [3]]


def test_close_answers_queued_requests_and_refuses_new_ones():
    recorder = Recorder()
    queue = recorder.queue()
    queue.add([row(10, 1)], recorder.answer("queued"))
    queue.close(UnavailableError("shutting down"))
    queue.add([row(10, 2)], recorder.answer("late"))
    assert not queue.run_next()
    assert recorder.batches == []
    assert all(isinstance(result, UnavailableError) for _, result in recorder.answers)
    assert [name for name, _ in recorder.answers] == ["queued", "late"]


def test_the_worker_answers_from_its_thread_and_submit_waits_while_the_backlog_is_over_a_budget():
    release = threading.Event()
    answers = SenderAnswers(4)

    def compute(items):
        release.wait(10)
        return tag_outputs(items)

    worker = StepWorker(FunctionHead(unpack_tagged, compute, respond, LIMITS))
    try:

        def request(length, tag):
            return tagged(length, tag), answers.sender(str(tag)), lambda: False

        worker.submit([request(900, 1)])  # the worker takes it and blocks in compute
        submitter = threading.Thread(target=worker.submit, args=([request(900, 2), request(900, 3)],))
        submitter.start()
        submitter.join(0.5)
        assert submitter.is_alive()  # 1,800 tokens queued > the 1,000-token budget: execute() waits
        release.set()
        submitter.join(10)
        assert not submitter.is_alive()
        # Returned by submit() if done before it returns, else answered through its sender.
        [result] = worker.submit([request(12, 4)])
        if result is not None:
            answers.sender("4")(result)
        assert answers.done.wait(10)
        assert answers.names[0] == "1" and sorted(answers.names) == ["1", "2", "3", "4"]
    finally:
        release.set()
        worker.close()


@pytest.mark.parametrize("lengths", [[5], [3, 30, 300, 3000], [40] * 20])
def test_the_synchronous_driver_gives_every_row_its_own_output(lengths):
    from backend.wire import pack_rows
    from tests.drivers import run_model_requests

    recorder = Recorder()
    items = [row(length, tag) for tag, length in enumerate(lengths, start=10)]
    step = FunctionHead(unpack_rows, recorder.compute, respond, LIMITS)
    [result, cancelled] = run_model_requests(step, [pack_rows(items, pad_token_id=0), None])
    assert result["TAGS"].tolist() == list(range(10, 10 + len(lengths)))
    assert isinstance(cancelled, CancelledError)


def test_execute_runs_a_cheap_micro_batch_itself_while_the_worker_is_in_a_heavy_forward():
    limits = BatchLimits(token_budget=1000, max_rows=8, vision_patch_budget=10_000, batch_overhead_tokens=16)
    heavy_started, release = threading.Event(), threading.Event()
    ran_in: dict[int, str] = {}
    answered: list[str] = []

    def compute(items):
        tag = int(items[0].input_ids[0])
        ran_in[tag] = threading.current_thread().name
        if tag == 1:
            heavy_started.set()
            release.wait(10)
        return tag_outputs(items)

    def request(length, tag):
        return tagged(length, tag), lambda result: answered.append(str(tag)), lambda: False

    reports: list[int] = []
    worker = StepWorker(
        FunctionHead(unpack_tagged, compute, respond, limits), after_micro_batch=lambda: reports.append(1)
    )
    try:
        worker.submit([request(900, 1)])  # 916 tokens: not cheap, the worker runs it
        assert heavy_started.wait(10)
        # 28 tokens <= 1000 / 8: submit() runs it and returns its result (Triton sends a returned list
        # faster than a response sender); its sender is not used
        [result] = worker.submit([request(12, 2)])
        assert result["TAGS"].tolist() == [2] and answered == []
        assert len(reports) == 2  # each submit() reports (metrics flush), the worker has not yet
        assert ran_in[2] == threading.current_thread().name and ran_in[1] == "model-step-worker"
    finally:
        release.set()
        worker.close()
    assert answered == ["1"]


def test_requests_that_waited_past_the_queue_timeout_are_refused_before_any_work(tmp_path):
    """QUEUED_AT is when the preprocess step answered; a request older than the step's queue timeout gets
    UNAVAILABLE in execute()'s returned list without being unpacked or run, the others run as usual, and a
    request without QUEUED_AT (a direct client) is never refused. The newest stamp taken is published."""
    from backend import backpressure
    from backend.backpressure import QueueBound
    from backend.protocol import QUEUED_AT

    recorder = Recorder()
    unpacked: list[int] = []

    def unpack(inputs):
        unpacked.append(int(inputs["TAG"][0]))
        return [row(12, int(inputs["TAG"][0]))]

    path = tmp_path / backpressure.channel_path("qwen3_vl_embedding_model", server_pid=1).name
    step = FunctionHead(unpack, recorder.compute, respond, LIMITS, queue_timeout_seconds=2.0)
    worker = StepWorker(step, publisher=backpressure.Publisher(path))
    now = worker.queue_bound.clock()

    def request(tag, waited_seconds=None):
        inputs = {"TAG": np.array([tag])}
        if waited_seconds is not None:
            inputs[QUEUED_AT] = np.array([[now - int(waited_seconds * 1e9)]], dtype=np.int64)
        return (inputs, recorder.answer(str(tag)), lambda: False)

    try:
        results = worker.submit([request(1, 0.1), request(2, 30.0), request(3), request(4, 1.5)])
        # The publisher went live after these were stamped: it says it started, which covers them.
        published = int.from_bytes(path.read_bytes()[:8], "little")
        assert now - 10**9 < published <= now
        [later] = worker.submit([request(5, 0.0)])  # stamped after the step started
        assert int.from_bytes(path.read_bytes()[:8], "little") == now
        # A stamp from the future (a direct client's) is taken as now, not as what it says.
        [future] = worker.submit([request(6, -3600.0)])
        assert int.from_bytes(path.read_bytes()[:8], "little") <= worker.queue_bound.clock()
    finally:
        worker.close()
    assert not path.exists()  # closed with the step
    assert isinstance(results[1], UnavailableError)
    assert "queue timeout of 2 s" in str(results[1]) and "retry" in str(results[1])
    assert [int(result["TAGS"][0]) for index, result in enumerate(results) if index != 1] == [1, 3, 4]
    assert int(later["TAGS"][0]) == 5 and int(future["TAGS"][0]) == 6
    assert sorted(unpacked) == [1, 3, 4, 5, 6]
    assert worker.queue_bound.refused == 1
    # Off (0) refuses nothing, however old the request.
    ancient = {QUEUED_AT: np.array([[1]], dtype=np.int64)}
    assert QueueBound(0.0).refusal(ancient) is None
    assert isinstance(QueueBound(1.0).refusal(ancient), UnavailableError)


def test_the_preprocess_gate_bounds_what_waits_for_the_model_step(tmp_path):
    """A preprocess instance lets at most `limit` of its requests wait for the model step: those stamped
    after the newest stamp the model step took. Without a model step (no file, or one that says nothing)
    it refuses nothing; a reloaded model step (the file replaced) is read anew; stamps are forgotten after
    FORGET_SECONDS (requests that never reached the model step)."""
    from backend import backpressure

    clock = [10**12]
    path = tmp_path / "channel"
    gate = backpressure.QueueGate(path, limit=3, clock=lambda: clock[0])
    for stamp in (1, 2, 3, 4, 5):
        assert gate.admit(1) == 1  # no model step yet
        gate.handed_on(clock[0] - 10 + stamp)
    publisher = backpressure.Publisher(path, clock=lambda: clock[0])
    assert gate.admit(4) == 3  # live, nothing taken yet: what came before it is not waiting for it
    for stamp in (1, 2, 3):
        gate.handed_on(clock[0] + stamp)
    assert gate.admit(4) == 0
    publisher.taken(clock[0] + 1)
    assert gate.admit(4) == 1  # stamps 2 and 3 wait
    gate.handed_on(clock[0] + 4)
    assert gate.admit(1) == 0
    publisher.close()
    replacement = backpressure.Publisher(path, clock=lambda: clock[0])
    replacement.taken(clock[0] + 3)
    assert gate.admit(5) == 2  # stamp 4 waits
    clock[0] += int(backpressure.FORGET_SECONDS * 1e9) + 10
    assert gate.admit(5) == 3
    assert "overloaded" in str(gate.refusal()) and "retry" in str(gate.refusal())
    # Requests that never reach the model step (a client calling the preprocess step alone) do not block
    # the ensemble: while the model step runs an execute() they count; once it has been free for
    # IDLE_SECONDS, what was stamped before its free spell is not waiting for it.
    replacement.busy()
    for stamp in (1, 2, 3):
        gate.handed_on(clock[0] + stamp)
    clock[0] += 10**9
    assert gate.admit(5) == 0  # busy: they wait
    replacement.free()
    gate.handed_on(clock[0] + 1)
    assert gate.admit(5) == 0  # free for less than IDLE_SECONDS
    clock[0] += int(backpressure.IDLE_SECONDS * 1e9) + 10
    gate.handed_on(clock[0])
    # The four could have been handed to the free model step IDLE_SECONDS ago: not waiting. The fifth is.
    assert gate.admit(5) == 2
    clock[0] += int(backpressure.IDLE_SECONDS * 1e9) + 10
    assert gate.admit(5) == 3  # nor the fifth, now
    replacement.close()
    gate.close()


def test_the_preprocess_step_stamps_what_it_hands_on_and_refuses_past_the_gate(tmp_path):
    from backend import backpressure
    from backend.protocol import QUEUED_AT
    from backend.steps import preprocess_requests

    class Preprocessor:
        def prepare_request(self, inputs):
            if inputs["N"] is None:
                raise ValueError("bad")
            return [row(3, tag) for tag in range(int(inputs["N"][0]))]

        def pack(self, rows):
            return {"INPUT_IDS": np.stack([r.input_ids for r in rows])}

    import time

    path = tmp_path / "channel"
    publisher = backpressure.Publisher(path)
    publisher.taken(1)
    gate = backpressure.QueueGate(path, limit=2)
    before = time.monotonic_ns()
    good, bad, refused = preprocess_requests(
        Preprocessor(), [{"N": np.array([3])}, {"N": None}, {"N": np.array([1])}], gate
    )
    stamps = good[QUEUED_AT]
    assert stamps.shape == (3, 1) and stamps.dtype == np.int64
    assert before <= int(stamps.min()) <= time.monotonic_ns()
    assert isinstance(bad, Exception) and not isinstance(bad, UnavailableError)
    assert isinstance(refused, UnavailableError)  # the gate admitted two, before any work
    assert gate.admit(2) == 1  # the good one waits; the bad one was never handed on
    publisher.close()
    gate.close()


def test_with_two_lanes_execute_runs_two_cheap_micro_batches_at_once_and_returns_every_answer():
    """On the CPU a model step runs one forward per lane of torch threads (backend.runtime.platforms):
    execute() splits its cheap rows into a micro-batch per lane and runs them side by side."""
    inside = threading.Barrier(2, timeout=10)  # passes only when two computes run at the same time
    batches: list[list[int]] = []
    threads: set[str] = set()

    def compute(items):
        batches.append([int(item.input_ids[0]) for item in items])
        threads.add(threading.current_thread().name)
        inside.wait()
        return tag_outputs(items)

    answered: list[str] = []

    def request(tag):
        return tagged(20, tag), lambda result: answered.append(str(tag)), lambda: False

    worker = StepWorker(FunctionHead(unpack_tagged, compute, respond, LIMITS), lanes=2)
    try:
        results = worker.submit([request(tag) for tag in range(1, 7)])
        assert [result["TAGS"].tolist() for result in results] == [[tag] for tag in range(1, 7)]
        assert answered == []  # all returned by execute(), none through a sender
        assert sorted(len(batch) for batch in batches) == [3, 3]  # 6 rows over 2 lanes
        assert len(threads) == 2 and threading.current_thread().name in threads
    finally:
        worker.close()


def test_with_two_lanes_bulk_rows_run_on_two_worker_threads_at_once():
    inside = threading.Barrier(2, timeout=10)  # the first two computes must run at the same time
    calls = itertools.count()
    answers = SenderAnswers(4)

    def compute(items):
        if next(calls) < 2:
            inside.wait()
        return tag_outputs(items)

    worker = StepWorker(FunctionHead(unpack_tagged, compute, respond, LIMITS), lanes=2)
    try:
        requests = [(tagged(20, tag), answers.sender(tag), lambda: False) for tag in range(4)]
        # The worker threads run bulk rows (two at once, or the barrier breaks and they fail); what they
        # finish before execute() returns comes back in its list, the rest through the senders.
        for tag, result in enumerate(worker.submit(requests, bulk=[True] * 4)):
            if result is not None:
                answers.sender(tag)(result)
        assert answers.done.wait(10) and sorted(answers.names) == [0, 1, 2, 3]
    finally:
        worker.close()
