"""Priority classes in the model step's queue (backend.runtime.priority, used by backend.runtime.scheduler)
without a server: interactive rows before bulk rows, the two never in one micro-batch, bulk owed its share
of the work while both wait, and bulk rows left to the worker thread so that execute() returns soon."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from backend.protocol import BULK_CLASS, INTERACTIVE_CLASS, PRIORITY_PARAMETER
from backend.runtime.batching import BatchLimits
from backend.runtime.priority import BulkShare, is_bulk_parameters
from backend.runtime.scheduler import MicroBatchQueue
from backend.runtime.worker import StepWorker
from tests.drivers import FunctionHead
from tests.unit.test_scheduler import (
    LIMITS,
    Recorder,
    drain,
    respond,
    row,
    tag_outputs,
    tagged,
    unpack_tagged,
)


def test_the_bulk_mark_is_read_from_the_request_parameters_and_anything_else_is_interactive():
    assert is_bulk_parameters(f'{{"{PRIORITY_PARAMETER}": "{BULK_CLASS}"}}')
    assert is_bulk_parameters({PRIORITY_PARAMETER: BULK_CLASS})
    for parameters in (
        None,
        "",
        "{}",
        f'{{"{PRIORITY_PARAMETER}": "{INTERACTIVE_CLASS}"}}',
        '{"priority_class": "BULK"}',
        "not json",
        "[1]",
    ):
        assert not is_bulk_parameters(parameters), parameters


def test_an_interactive_request_queued_after_bulk_ones_runs_first():
    recorder = Recorder()
    queue = recorder.queue()
    for tag in (1, 2, 3):
        queue.add([row(300, tag)], recorder.answer(f"bulk{tag}"), bulk=True)
    queue.add([row(12, 9)], recorder.answer("query"))
    assert queue.run_next()
    assert recorder.batches == [[9]]
    assert [name for name, _ in recorder.answers] == ["query"]
    drain(queue)
    assert sorted(tag for batch in recorder.batches[1:] for tag in batch) == [1, 2, 3]


def test_interactive_and_bulk_rows_never_share_a_micro_batch():
    """Without classes these short rows would be one forward; an interactive row in a micro-batch of bulk
    rows would wait for all of them."""
    recorder = Recorder()
    queue = recorder.queue()
    queue.add([row(10, tag) for tag in (1, 2, 3)], recorder.answer("bulk"), bulk=True)
    queue.add([row(10, 7)], recorder.answer("query"))
    drain(queue)
    assert recorder.batches == [[7], [1, 2, 3]]


def test_a_bulk_only_queue_is_planned_and_ordered_as_without_classes():
    plain, marked = Recorder(), Recorder()
    for recorder, bulk in ((plain, False), (marked, True)):
        queue = recorder.queue()
        for tag, length in ((1, 900), (2, 12), (3, 40), (4, 12)):
            queue.add([row(length, tag)], recorder.answer(str(tag)), bulk=bulk)
        drain(queue)
    assert marked.batches == plain.batches


def test_bulk_is_owed_its_share_of_the_work_while_interactive_requests_keep_coming():
    """An interactive request is always waiting: bulk still runs, and gets at least its share of the
    padded tokens computed (and not much more)."""
    limits = BatchLimits(token_budget=1000, max_rows=1, vision_patch_budget=10_000, batch_overhead_tokens=0)
    recorder = Recorder()
    queue = MicroBatchQueue(
        FunctionHead(lambda inputs: [], recorder.compute, respond, limits), bulk_share=0.25
    )
    for tag in range(100, 140):
        queue.add([row(200, tag)], recorder.answer("bulk"), bulk=True)
    next_query = 0
    for _ in range(12):
        queue.add([row(200, next_query)], recorder.answer("query"))  # one always waits
        next_query += 1
    for _ in range(40):
        assert queue.run_next()
        queue.add([row(200, next_query)], recorder.answer("query"))
        next_query += 1
    bulk_batches = sum(1 for batch in recorder.batches if batch[0] >= 100)
    assert recorder.batches[0][0] < 100  # interactive first
    assert 0.25 <= bulk_batches / len(recorder.batches) <= 0.3
    # Evenly spread: bulk never waits more than a few interactive micro-batches.
    gaps = np.diff([index for index, batch in enumerate(recorder.batches) if batch[0] >= 100])
    assert gaps.max() <= 4


def test_the_account_starts_afresh_once_no_interactive_work_waits():
    """Bulk running alone earns no credit: a query arriving after a long bulk-only spell runs next."""
    share = BulkShare(0.5)
    is_bulk = lambda batch: batch.startswith("b")  # noqa: E731
    rank = lambda batch: batch  # noqa: E731
    cost = lambda batch: 100  # noqa: E731
    for _ in range(10):
        assert share.choose(["b1"], is_bulk, rank, cost) == "b1"
    assert share.choose(["b1", "q1"], is_bulk, rank, cost) == "q1"
    assert share.choose(["b1", "q2"], is_bulk, rank, cost) == "b1"  # owed half of the 100 tokens run
    assert share.choose(["b1", "q2"], is_bulk, rank, cost) == "q2"
    assert share.choose(["b1"], is_bulk, rank, cost) == "b1"  # the queries are done: a fresh account
    assert share.choose(["b1", "q3"], is_bulk, rank, cost) == "q3"


@pytest.mark.parametrize("share", [0.0, 1.0, -0.1])
def test_a_share_outside_zero_to_one_is_refused(share):
    with pytest.raises(ValueError):
        BulkShare(share)


def test_the_bulk_share_setting_is_checked_at_load():
    from backend.errors import ConfigError
    from backend.settings import ModelSettings, load_settings

    assert load_settings(ModelSettings, {"bulk_share": "0.2"}).bulk_share == 0.2
    for bad in ("0", "1", "1.5"):
        with pytest.raises(ConfigError):
            load_settings(ModelSettings, {"bulk_share": bad})


def test_execute_leaves_bulk_rows_to_the_worker_and_returns_at_once():
    """A cheap interactive row is run by submit() itself and returned; a cheap bulk row is not (Triton
    hands the step no new request, an interactive one included, until execute() returns): the worker
    thread runs it and answers through its sender."""
    ran_in: dict[int, str] = {}
    answered: list[str] = []
    release, bulk_started = threading.Event(), threading.Event()

    def compute(items):
        tag = int(items[0].input_ids[0])
        ran_in[tag] = threading.current_thread().name
        if tag == 1:
            bulk_started.set()
            release.wait(10)
        return tag_outputs(items)

    def request(length, tag):
        return tagged(length, tag), lambda result: answered.append(str(tag)), lambda: False

    worker = StepWorker(FunctionHead(unpack_tagged, compute, respond, LIMITS))
    try:
        [bulk] = worker.submit([request(12, 1)], bulk=[True])
        assert bulk is None  # answered later, through its sender
        assert bulk_started.wait(10)
        [query] = worker.submit([request(12, 2)])
        assert query is not None and query["TAGS"].tolist() == [2]
        assert ran_in[2] == threading.current_thread().name
        assert answered == []  # the bulk forward is still running in the worker
    finally:
        release.set()
        worker.close()
    assert answered == ["1"] and ran_in[1] == "model-step-worker"


def test_the_client_marks_bulk_requests_with_the_names_the_server_reads():
    from backend import protocol
    from qwen3vl_client import _wire
    from qwen3vl_client.options import PRIORITY_CLASSES

    assert _wire.PRIORITY_PARAMETER == protocol.PRIORITY_PARAMETER
    assert _wire.TRITON_PRIORITY == protocol.TRITON_PRIORITY
    assert set(PRIORITY_CLASSES) == {protocol.INTERACTIVE_CLASS, protocol.BULK_CLASS}
    assert _wire.priority_arguments("interactive") == {}  # unmarked: the server's default class
    marks = _wire.priority_arguments("bulk")
    assert marks == {"priority": 2, "parameters": {"priority_class": "bulk"}}
    assert is_bulk_parameters(marks["parameters"])


def test_a_client_refuses_an_unknown_priority_class():
    from qwen3vl_client.options import make_options

    assert make_options(None, "grpc", "m", 4, 1, 10.0, 3, 0.5, 1 << 20, priority="bulk").priority == "bulk"
    with pytest.raises(ValueError, match="priority"):
        make_options(None, "grpc", "m", 4, 1, 10.0, 3, 0.5, 1 << 20, priority="urgent")  # type: ignore[arg-type]


def test_the_gateway_reads_the_class_from_x_priority_or_vllms_priority_field():
    from gateway.errors import GatewayError
    from gateway.priority import priority_class

    assert priority_class("") == "interactive"
    assert priority_class("bulk") == "bulk"
    assert priority_class(" Bulk ") == "bulk"
    assert priority_class("interactive", body_priority=5) == "interactive"  # the header wins
    assert priority_class("", body_priority=1) == "bulk"  # vLLM: higher values are served later
    assert priority_class("", body_priority=-3) == "interactive"
    with pytest.raises(GatewayError, match="X-Priority"):
        priority_class("urgent")


def test_bulk_rows_are_taken_in_up_to_their_own_backlog_so_that_queries_overtake_them_here():
    """Triton's queue in front of the step is first come, first served: execute() takes in bulk requests
    up to bulk_backlog_tokens (here 3 budgets) before it waits, where one budget would stop it."""
    release = threading.Event()

    def compute(items):
        release.wait(10)
        return tag_outputs(items)

    def request(length, tag):
        return tagged(length, tag), lambda result: None, lambda: False

    worker = StepWorker(FunctionHead(unpack_tagged, compute, respond, LIMITS), bulk_backlog_tokens=3000)
    try:
        # 900 + 2 x 900 queued behind the one running: within 3,000 bulk tokens, submit() returns.
        for tag in (1, 2, 3):
            assert worker.submit([request(900, tag)], bulk=[True]) == [None]
        assert worker.queue.has_room(LIMITS.token_budget, 3000)
        assert not worker.queue.has_room(LIMITS.token_budget)  # one shared budget would be full
        blocked = threading.Thread(
            target=worker.submit, args=([request(900, 4), request(900, 5)], [True] * 2)
        )
        blocked.start()
        blocked.join(0.5)
        assert blocked.is_alive()  # 3,600 bulk tokens queued > 3,000: execute() waits
    finally:
        release.set()
        blocked.join(10)
        worker.close()


def test_triton_priority_levels_are_on_the_preprocess_steps_only():
    """Two levels in front of each preprocess step (bulk = Triton priority 2, unmarked requests level 1);
    none on the model steps, where 2.51's batcher would then sleep as with a queue policy (measured: p99
    43 -> 520 ms at 8 in flight)."""
    from backend.protocol import TRITON_PRIORITY
    from tests.conftest import REPO
    from tests.unit.test_protocol import _config

    for ensemble in ("qwen3_vl_embedding", "qwen3_vl_reranker"):
        batching = _config(
            REPO / "model_repository" / f"{ensemble}_preprocess" / "config.pbtxt"
        ).dynamic_batching
        assert batching.priority_levels == max(TRITON_PRIORITY.values())
        assert batching.default_priority_level == TRITON_PRIORITY[INTERACTIVE_CLASS]
        model = _config(REPO / "model_repository" / f"{ensemble}_model" / "config.pbtxt").dynamic_batching
        assert model.priority_levels == 0
