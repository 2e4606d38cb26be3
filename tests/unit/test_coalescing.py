"""The coalescer's merging, splitting and error routing, with a fake call in place of Triton (no server);
and the Triton side's pieces it relies on (per-row tensors, whom an error concerns)."""

from __future__ import annotations

import asyncio
import re

import pytest

from gateway.calls import Outcome, assemble, call_groups, mergeable
from gateway.coalescing import Blame, Coalescer, RowRejected
from gateway.errors import Kind
from gateway.items import Item
from gateway.triton_errors import blame, judge
from qwen3vl_client._wire import Pair, build_inputs, build_rerank_inputs
from tests.unit.test_gateway import FakeTritonError

_ROW = re.compile(r"row (\d+): ")


class Refused(Exception):
    """What the fake call raises: "row N: ..." for a bad row, anything else for the whole call."""


class FakeCall:
    """Answers each row in upper case; a row starting "bad" fails the call naming it; calls wait for
    ``gate`` so that a test decides when they finish."""

    def __init__(self, fail_all: str | None = None):
        self.calls: list[list[str]] = []
        self.gate = asyncio.Event()
        self.fail_all = fail_all

    async def __call__(self, rows: list[str]) -> list[str]:
        self.calls.append(list(rows))
        await self.gate.wait()
        if self.fail_all:
            raise Refused(self.fail_all)
        for index, row in enumerate(rows):
            if row.startswith("bad"):
                raise Refused(f"row {index}: TEXT: {row} is bad")
        return [row.upper() for row in rows]


def fake_judge(error: Exception) -> int | Blame:
    match = _ROW.search(str(error))
    if match:
        return int(match.group(1))
    return Blame.UNKNOWN if "unclear" in str(error) else Blame.ALL


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_request_that_finds_a_call_free_goes_at_once_and_alone():
    async def scenario():
        call = FakeCall()
        coalescer = Coalescer(call, fake_judge, max_rows=8, max_calls=2)
        call.gate.set()
        assert await coalescer.submit(["a", "b"]) == ["A", "B"]
        assert await coalescer.submit(["c"]) == ["C"]
        assert call.calls == [["a", "b"], ["c"]]
        assert coalescer.calls == 0

    run(scenario())


def test_requests_behind_busy_calls_are_merged_and_answered_each_their_own_rows():
    async def scenario():
        call = FakeCall()
        coalescer = Coalescer(call, fake_judge, max_rows=8, max_calls=1)
        first = asyncio.create_task(coalescer.submit(["a"]))
        await settle()
        waiting = [asyncio.create_task(coalescer.submit(rows)) for rows in (["b"], ["c", "d"], ["e"])]
        await settle()
        assert call.calls == [["a"]] and coalescer.waiting == 3
        call.gate.set()
        assert await first == ["A"]
        assert [await task for task in waiting] == [["B"], ["C", "D"], ["E"]]
        assert call.calls == [["a"], ["b", "c", "d", "e"]]
        assert coalescer.calls == 0 and coalescer.waiting == 0

    run(scenario())


def test_with_a_call_free_but_another_running_what_arrives_in_one_turn_goes_together_at_once():
    async def scenario():
        call = FakeCall()
        coalescer = Coalescer(call, fake_judge, max_rows=8, max_calls=2)
        first = asyncio.create_task(coalescer.submit(["a"]))
        await settle()
        same_turn = [asyncio.create_task(coalescer.submit([row])) for row in "bcd"]
        await settle()
        # Sent without waiting for the first call: a call was free.
        assert call.calls == [["a"], ["b", "c", "d"]] and coalescer.calls == 2
        late = asyncio.create_task(coalescer.submit(["e"]))
        await settle()
        assert len(call.calls) == 2 and coalescer.waiting == 1  # both calls busy: it waits
        call.gate.set()
        assert [await task for task in [first, *same_turn, late]] == [["A"], ["B"], ["C"], ["D"], ["E"]]
        assert call.calls[2] == ["e"]

    run(scenario())


def test_a_merged_call_holds_at_most_max_rows_and_keeps_arrival_order():
    async def scenario():
        call = FakeCall()
        coalescer = Coalescer(call, fake_judge, max_rows=4, max_calls=1)
        first = asyncio.create_task(coalescer.submit(["a"]))
        await settle()
        parts = [["b", "c"], ["d", "e"], ["f"], ["g", "h", "i", "j"]]
        waiting = [asyncio.create_task(coalescer.submit(rows)) for rows in parts]
        await settle()
        call.gate.set()
        await first
        answers = [await task for task in waiting]
        assert answers == [[row.upper() for row in rows] for rows in parts]
        assert call.calls == [["a"], ["b", "c", "d", "e"], ["f"], ["g", "h", "i", "j"]]
        with pytest.raises(ValueError, match="over the limit of 4"):
            await coalescer.submit(["a"] * 5)

    run(scenario())


def test_the_request_owning_a_rejected_row_gets_it_in_its_numbering_and_the_others_go_again():
    async def scenario():
        call = FakeCall()
        coalescer = Coalescer(call, fake_judge, max_rows=8, max_calls=1)
        first = asyncio.create_task(coalescer.submit(["a"]))
        await settle()
        good = asyncio.create_task(coalescer.submit(["b", "c"]))
        owner = asyncio.create_task(coalescer.submit(["d", "bad-e"]))
        later = asyncio.create_task(coalescer.submit(["f"]))
        await settle()
        call.gate.set()
        await first
        with pytest.raises(RowRejected) as rejected:
            await owner
        assert rejected.value.row == 1 and "bad-e" in str(rejected.value.error)
        assert await good == ["B", "C"] and await later == ["F"]
        # The merged call named the bad row (3); the others went again together, without it.
        assert call.calls == [["a"], ["b", "c", "d", "bad-e", "f"], ["b", "c", "f"]]

    run(scenario())


def test_an_error_of_every_row_reaches_every_request_and_an_unclear_one_only_its_owner():
    async def every_row():
        call = FakeCall(fail_all="Triton unavailable")
        coalescer = Coalescer(call, fake_judge, max_rows=8, max_calls=1)
        tasks = [asyncio.create_task(coalescer.submit([row])) for row in "abc"]
        await settle()
        call.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(result, Refused) for result in results)
        assert call.calls == [["a"], ["b", "c"]]  # not sent again

    async def unclear():
        calls: list[list[str]] = []

        async def send(rows: list[str]) -> list[str]:
            calls.append(list(rows))
            await asyncio.sleep(0.01)
            if "poison" in rows:
                raise Refused("unclear: the request is wrong somewhere")
            return [row.upper() for row in rows]

        coalescer = Coalescer(send, fake_judge, max_rows=8, max_calls=1)
        tasks = [asyncio.create_task(coalescer.submit([row])) for row in ("a", "b", "poison", "c")]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert results[:2] == [["A"], ["B"]] and results[3] == ["C"]
        assert isinstance(results[2], Refused)  # its own error, raised as sent alone
        assert calls[:2] == [["a"], ["b", "poison", "c"]]
        assert sorted(map(tuple, calls[2:])) == [("b",), ("c",), ("poison",)]

    run(every_row())
    run(unclear())


def test_a_caller_that_goes_away_breaks_no_other():
    async def scenario():
        call = FakeCall()
        coalescer = Coalescer(call, fake_judge, max_rows=8, max_calls=1)
        first = asyncio.create_task(coalescer.submit(["a"]))
        await settle()
        gone = asyncio.create_task(coalescer.submit(["gone"]))
        kept = asyncio.create_task(coalescer.submit(["b"]))
        await settle()
        gone.cancel()
        await settle()
        call.gate.set()
        await first
        assert await kept == ["B"]
        assert call.calls == [["a"], ["b"]]  # the cancelled request was never sent
        # Cancelled while its merged call runs: the call goes on for the others.
        call.gate.clear()
        blocker = asyncio.create_task(coalescer.submit(["x"]))
        await settle()
        leaving = asyncio.create_task(coalescer.submit(["y"]))
        staying = asyncio.create_task(coalescer.submit(["z"]))
        await settle()
        call.gate.set()
        await blocker
        await settle()
        leaving.cancel()
        assert await staying == ["Z"]
        assert call.calls[-1] == ["y", "z"]
        assert coalescer.calls == 0

    run(scenario())


class FakeModule:
    """tritonclient's InferInput as far as the tensor builders use it."""

    class InferInput:
        def __init__(self, name, shape, datatype):
            self.name, self.shape, self.datatype = name, shape, datatype

        def set_data_from_numpy(self, array):
            self.array = array


def test_merged_rows_keep_their_own_instruction_size_and_format():
    rows = [
        Item(text="a").row(),
        Item(text="b", instruction="Find it").row(64),
        Item(text="c", raw=True).row(128),
    ]
    tensors = {tensor.name: tensor.array for tensor in build_inputs(FakeModule, rows)}
    assert tensors["TEXT"][:, 0].tolist() == [b"a", b"b", b"c"]
    assert tensors["INSTRUCTION"][:, 0].tolist() == [b"", b"Find it", b""]  # "" = the default
    assert tensors["DIMENSIONS"][:, 0].tolist() == [0, 64, 128]  # 0 = full size
    assert tensors["RAW"][:, 0].tolist() == [False, False, True]
    alone = {tensor.name for tensor in build_inputs(FakeModule, rows[:1])}
    assert alone == {"TEXT"}  # a plain request sends only what it uses, as before
    pairs = [
        Pair(Item(text="q1").row(), Item(text="d1").row()),
        Pair(Item(text="q2").row(), Item(text="d2").row(), b"Judge"),
    ]
    tensors = {tensor.name: tensor.array for tensor in build_rerank_inputs(FakeModule, pairs)}
    assert tensors["QUERY_TEXT"][:, 0].tolist() == [b"q1", b"q2"]
    assert tensors["INSTRUCTION"][:, 0].tolist() == [b"", b"Judge"]
    token_row = Item(raw=True, token_ids=(1, 2)).row()
    tensors = {tensor.name: tensor.array for tensor in build_inputs(FakeModule, [token_row])}
    assert tensors["TOKEN_IDS"].tolist() == [[1, 2]] and tensors["RAW"].tolist() == [[True]]
    assert not mergeable(Item(images=(b"png",)).row())
    assert not mergeable(token_row)
    assert mergeable(Item(text="a").row()) and mergeable(pairs[0])
    assert not mergeable(Pair(Item(text="q").row(), Item(videos=(b"mp4",)).row()))


def test_a_request_is_cut_into_calls_and_its_answers_are_put_back_in_its_order():
    assert call_groups(5, 2) == [[0, 1], [2, 3], [4]]
    assert call_groups(3, 0) == [[0, 1, 2]]  # the ensemble sets no limit
    assert call_groups(4, 2, alone=[1, 3]) == [[0, 2], [1], [3]]  # token-id rows last, one per call
    groups = [[0, 2], [1]]
    answers = [[("a", 3), ("c", 5)], [("b", 4)]]
    assert assemble(groups, answers, counted=True) == Outcome(["a", "b", "c"], [3, 4, 5])
    assert assemble(groups, answers, counted=False) == Outcome(["a", "b", "c"], None)


def test_triton_errors_are_judged_and_a_rejected_row_is_named_in_its_requests_numbering():
    row_error = FakeTritonError(
        "StatusCode.INVALID_ARGUMENT", "in ensemble 'e', row 5: DIMENSIONS: too small"
    )
    assert judge(row_error) == 5
    assert judge(FakeTritonError("StatusCode.INVALID_ARGUMENT", "inputs disagree")) is Blame.UNKNOWN
    assert judge(FakeTritonError("StatusCode.INTERNAL", "boom")) is Blame.UNKNOWN
    assert judge(FakeTritonError("StatusCode.UNAVAILABLE", "Exceeds maximum queue size")) is Blame.ALL
    assert judge(FakeTritonError("StatusCode.DEADLINE_EXCEEDED", "late")) is Blame.ALL
    # Row 5 of the merged call was the owner's row 1, its item 7.
    error = blame(RowRejected(row_error, 1), [3, 7], "input")
    assert (error.kind, error.message, error.param) == (
        Kind.INVALID,
        "input[7]: DIMENSIONS: too small",
        "input",
    )
    query = FakeTritonError("StatusCode.INVALID_ARGUMENT", "row 9: QUERY_TEXT: bad")
    assert (
        blame(RowRejected(query, 0), [0, 1], "documents", about_query=True).message
        == "query: QUERY_TEXT: bad"
    )


def test_a_merged_call_holds_at_most_max_cost_and_a_part_over_it_goes_alone():
    """Long texts: a merged call of many long rows is seconds of work that everyone merged into it or queued
    behind it waits for; the cost cap (estimated tokens) cuts it where the rows alone would not."""

    async def scenario():
        call = FakeCall()
        coalescer = Coalescer(call, fake_judge, max_rows=8, max_calls=1, cost=len, max_cost=6)
        first = asyncio.create_task(coalescer.submit(["a"]))
        await settle()
        parts = [["bb", "cc"], ["dd"], ["eeee", "ffff"], ["g"], ["h"]]
        waiting = [asyncio.create_task(coalescer.submit(rows)) for rows in parts]
        await settle()
        call.gate.set()
        await first
        answers = [await task for task in waiting]
        assert answers == [[row.upper() for row in rows] for rows in parts]
        # 4 + 2 = 6 fits; 8 is over the cap alone and goes alone; then 1 + 1.
        assert call.calls == [["a"], ["bb", "cc", "dd"], ["eeee", "ffff"], ["g", "h"]]

    run(scenario())


def test_a_rows_estimated_tokens_follow_its_text_bytes():
    from gateway.calls import BYTES_PER_TOKEN, estimated_tokens

    text = Item(text="x" * 4000).row()
    assert estimated_tokens(text) == 4000 // BYTES_PER_TOKEN
    assert estimated_tokens(Item(text="").row()) == 1
    pair = Pair(Item(text="q" * 400).row(), Item(text="d" * 4000).row(), b"i" * 40)
    assert estimated_tokens(pair) == 4440 // BYTES_PER_TOKEN


def test_only_the_steps_refusals_for_load_count_as_triton_refusing_for_load():
    from gateway.errors import GatewayError
    from gateway.triton_errors import refused_for_load

    step = "Triton: the model step is overloaded (expected wait 12.0 s for the work queued ahead)"
    assert refused_for_load(GatewayError(Kind.UNAVAILABLE, step))
    down = "Triton: failed to connect to all addresses"
    assert not refused_for_load(GatewayError(Kind.UNAVAILABLE, down))
    ours = "server overloaded: 5 requests already waiting"
    assert not refused_for_load(GatewayError(Kind.OVERLOADED, ours))
