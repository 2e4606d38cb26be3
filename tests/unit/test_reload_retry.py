"""A model being reloaded (its stub died) or a restarting tritonserver: what the client and the gateway retry,
for how long, and what stays an error (issue 19, "reloads invisible to clients")."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from gateway.errors import Kind
from gateway.models import ModelInfo
from gateway.settings import GatewaySettings
from gateway.triton import TritonBackend
from gateway.triton_errors import judge, kind_of, reloading
from qwen3vl_client import _retry
from qwen3vl_client._calls import Call, Collector
from qwen3vl_client._retry import Retry, Waits, is_reloading, next_step, reload_delay
from qwen3vl_client._wire import embedding_endpoint
from qwen3vl_client.errors import RequestError, ServerUnavailableError
from qwen3vl_client.items import Batch, Item, encode_row
from qwen3vl_client.options import MAX_RELOAD_BACKOFF, MIN_RELOAD_BACKOFF, make_options

MODEL = "qwen3_vl_embedding"
# What tritonserver 2.51 answered while the watchdog reloaded qwen3_vl_embedding_model (perf/reload.py).
UNLOADED = f"Request for unknown model: '{MODEL}' has no available versions"
LOADING = f"Request for unknown model: '{MODEL}' version 1 is not at ready state"
STUB_DIED = f"in ensemble '{MODEL}', Stub process '{MODEL}_model_0_0' is not healthy."
UNKNOWN = "Request for unknown model: 'no_such_model' is not found"


def error(status: str, message: str) -> InferenceServerException:
    return InferenceServerException(message, status=status)


def options(retries: int = 2, reload_wait: float = 60.0, model: str = MODEL):
    return make_options(
        "localhost:1", "grpc", model, 4, 1, 10.0, retries, 0.5, 1 << 20, reload_wait=reload_wait
    )


def one_row_batch() -> Batch:
    batch = Batch()
    batch.add(0, Item(text="x"), encode_row(Item(text="x"), None, None))
    return batch


@pytest.mark.parametrize(
    "status, message",
    [
        ("StatusCode.NOT_FOUND", UNLOADED),
        ("404", UNLOADED),
        ("StatusCode.NOT_FOUND", LOADING),
        ("StatusCode.INTERNAL", STUB_DIED),
        ("500", STUB_DIED),
    ],
)
def test_a_reload_is_retried_within_its_budget_whatever_retries_says(status, message):
    waits = Waits()
    step = next_step(error(status, message), one_row_batch(), 0, options(retries=0), "raise", (), None, waits)
    assert step == Retry(reload_delay(0.5, 0))
    # Attempts far past `retries` still wait while the budget lasts, polling at most MAX_RELOAD_BACKOFF apart.
    step = next_step(
        error(status, message), one_row_batch(), 30, options(retries=0), "raise", (), None, waits
    )
    assert step == Retry(MAX_RELOAD_BACKOFF)


def test_reload_delay_is_exponential_and_bounded():
    assert [reload_delay(0.125, attempt) for attempt in range(4)] == [0.125, 0.25, 0.5, MAX_RELOAD_BACKOFF]
    assert reload_delay(0.0, 0) == MIN_RELOAD_BACKOFF  # backoff=0 does not spin


def test_a_reload_past_its_budget_fails_with_the_servers_error(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(_retry.time, "monotonic", lambda: clock[0])
    waits, batch, failure = Waits(), one_row_batch(), error("StatusCode.NOT_FOUND", UNLOADED)
    assert isinstance(next_step(failure, batch, 0, options(), "raise", (), None, waits), Retry)
    clock[0] += 59.0
    assert isinstance(next_step(failure, batch, 1, options(), "raise", (), None, waits), Retry)
    clock[0] += 0.9
    with pytest.raises(RequestError, match=f"StatusCode.NOT_FOUND: {UNLOADED}$") as raised:
        next_step(failure, batch, 2, options(), "raise", (), None, waits)
    assert not isinstance(raised.value, ServerUnavailableError)
    # Forgotten once it has failed for good: the same batch sent again gets a whole budget.
    assert isinstance(next_step(failure, batch, 0, options(), "raise", (), None, waits), Retry)


def test_reload_wait_zero_or_no_waits_keeps_the_old_behaviour():
    failure = error("StatusCode.NOT_FOUND", UNLOADED)
    for reload_wait, waits in ((0.0, Waits()), (60.0, None)):
        with pytest.raises(RequestError, match="has no available versions"):
            next_step(failure, one_row_batch(), 0, options(reload_wait=reload_wait), "raise", (), None, waits)


def test_an_unknown_model_is_not_retried_unless_it_served_this_client():
    endpoint = embedding_endpoint(options(model="no_such_model"))
    failure = error("StatusCode.NOT_FOUND", UNKNOWN)
    with pytest.raises(
        RequestError, match="^request for item 0 failed: StatusCode.NOT_FOUND: Request for unknown"
    ):
        next_step(failure, one_row_batch(), 0, options(), "raise", (), endpoint, Waits())
    # The same name after it has answered: a restarted server that has not loaded it yet.
    waits = Waits()
    waits.done(one_row_batch(), "no_such_model")
    assert isinstance(next_step(failure, one_row_batch(), 0, options(), "raise", (), endpoint, waits), Retry)


def test_refused_connections_wait_for_a_server_that_served_but_not_for_one_never_reached():
    endpoint = embedding_endpoint(options())
    refused = ConnectionRefusedError("refused")
    with pytest.raises(ServerUnavailableError, match="unavailable after 3 attempts"):
        next_step(refused, one_row_batch(), 2, options(), "raise", (ConnectionError,), endpoint, Waits())
    waits = Waits()
    waits.done(one_row_batch(), MODEL)
    step = next_step(refused, one_row_batch(), 9, options(), "raise", (ConnectionError,), endpoint, waits)
    assert step == Retry(MAX_RELOAD_BACKOFF)


def test_a_busy_server_gets_the_usual_attempts_not_the_reload_budget():
    endpoint = embedding_endpoint(options())
    waits = Waits()
    waits.done(one_row_batch(), MODEL)
    busy = error("StatusCode.UNAVAILABLE", "Exceeds maximum queue size")
    assert next_step(busy, one_row_batch(), 1, options(), "raise", (), endpoint, waits) == Retry(1.0)
    with pytest.raises(ServerUnavailableError, match="unavailable after 3 attempts"):
        next_step(busy, one_row_batch(), 2, options(), "raise", (), endpoint, waits)


def test_invalid_input_and_other_internal_errors_are_not_reloads():
    assert not is_reloading(error("StatusCode.INVALID_ARGUMENT", f"row 0: {STUB_DIED}"))
    assert not is_reloading(error("StatusCode.INTERNAL", "boom"))
    assert not is_reloading(error("StatusCode.NOT_FOUND", UNKNOWN))


def test_a_call_remembers_the_models_that_answered():
    waits = Waits()
    call = Call(options(), embedding_endpoint(options()), iter(()), Collector(1, "raise", None), waits)
    batch = one_row_batch()
    call.done(batch, np.ones((1, 4), dtype=np.float32))
    assert waits.served == {MODEL}


def test_the_gateway_answers_a_reload_503_and_judges_it_every_rows():
    for status, message in (("StatusCode.INTERNAL", STUB_DIED), ("StatusCode.NOT_FOUND", UNLOADED)):
        assert kind_of(error(status, message)) is Kind.UNAVAILABLE
        assert reloading(error(status, message))
    assert kind_of(error("StatusCode.INTERNAL", "boom")) is Kind.INTERNAL
    assert judge(error("StatusCode.INTERNAL", STUB_DIED)).name == "ALL"
    busy = error("StatusCode.UNAVAILABLE", "Exceeds maximum queue size")
    assert kind_of(busy) is Kind.OVERLOADED and not reloading(busy)
    assert not reloading(error("StatusCode.INVALID_ARGUMENT", "row 0: bad"))


def gateway_call(failures: list[Exception], request_timeout: float = 300.0):
    """The gateway's call of one row whose first Triton calls raise ``failures``: (its outcome, the calls)."""
    backend = TritonBackend(GatewaySettings(coalesce_calls=0, request_timeout=request_timeout))
    backend._client = object()  # never used: the send below stands in for Triton
    info = ModelInfo(MODEL, 8, frozenset({"TEXT"}), frozenset({"EMBEDDING"}))
    calls = []

    async def send(rows):
        calls.append(len(rows))
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return [(np.ones(2), 0) for _ in rows]

    async def run():
        try:
            return await backend._call(info, [[0]], lambda index: index, send, "input")
        except Exception as failure:  # noqa: BLE001 - returned to the test
            return failure

    return asyncio.run(run()), calls


def test_the_gateway_waits_out_a_reload_and_answers():
    outcome, calls = gateway_call(
        [error("StatusCode.NOT_FOUND", UNLOADED), error("StatusCode.INTERNAL", STUB_DIED)]
    )
    assert len(calls) == 3 and len(outcome.values) == 1


def test_the_gateway_refuses_busy_at_once_and_a_reload_past_its_budget_with_503(monkeypatch):
    outcome, calls = gateway_call([error("StatusCode.UNAVAILABLE", "Exceeds maximum queue size")])
    assert calls == [1] and outcome.kind is Kind.OVERLOADED
    outcome, calls = gateway_call([error("StatusCode.INTERNAL", STUB_DIED)] * 100, request_timeout=0.3)
    assert 2 <= len(calls) <= 4 and outcome.kind is Kind.UNAVAILABLE and outcome.status == 503
    assert outcome.message == f"Triton: {STUB_DIED}"
