"""When the launcher reloads a model, when it restarts tritonserver instead, and how restarts are counted."""

from __future__ import annotations

from tools.ports import FREE_PORT_LOWEST, ephemeral_port_range, free_ports
from tools.supervisor import RESTART_BACKOFF_MAX_SECS, STABLE_SECS, CrashCount
from tools.watchdog import ensembles_over, next_reload, unready_ensembles

WINDOW = 300.0
BACKOFF = 2.0

# The shape of model_repository/: two ensembles of two steps each.
ENSEMBLES = {
    "qwen3_vl_embedding": ("qwen3_vl_embedding_preprocess", "qwen3_vl_embedding_model"),
    "qwen3_vl_reranker": ("qwen3_vl_reranker_preprocess", "qwen3_vl_reranker_model"),
}
ALL_READY = dict.fromkeys([*ENSEMBLES, *(step for steps in ENSEMBLES.values() for step in steps)], "READY")


def test_first_reload_is_immediate_and_further_ones_back_off():
    assert next_reload([], 1000.0, 4, WINDOW, BACKOFF) == (0, 0.0)
    assert next_reload([1000.0], 1000.5, 4, WINDOW, BACKOFF) == (1, 1.5)
    assert next_reload([990.0, 1000.0], 1001.0, 4, WINDOW, BACKOFF) == (2, 3.0)
    assert next_reload([980.0, 990.0, 1000.0], 1010.0, 4, WINDOW, BACKOFF) == (3, 0.0)  # 8 s were due


def test_past_the_cap_the_watchdog_gives_up():
    assert next_reload([980.0, 990.0, 995.0, 1000.0], 1001.0, 4, WINDOW, BACKOFF) is None
    # The limit the integration test uses: one reload, then a restart of tritonserver.
    assert next_reload([1000.0], 1001.0, 1, WINDOW, BACKOFF) is None
    # 0: restart tritonserver on the first dead stub.
    assert next_reload([], 1000.0, 0, WINDOW, BACKOFF) is None


def test_reloads_older_than_the_window_do_not_count():
    assert next_reload([1000.0 - WINDOW - 1, 1000.0 - 1], 1000.0, 2, WINDOW, BACKOFF) == (1, 1.0)
    assert next_reload([1000.0 - WINDOW], 1000.0, 1, WINDOW, BACKOFF) == (0, 0.0)


def test_ensembles_over_a_step_directly_and_through_another_ensemble():
    assert ensembles_over("qwen3_vl_embedding_model", ENSEMBLES) == {"qwen3_vl_embedding"}
    assert ensembles_over("qwen3_vl_embedding", ENSEMBLES) == set()
    nested = {**ENSEMBLES, "outer": ("qwen3_vl_embedding", "other")}
    assert ensembles_over("qwen3_vl_embedding_preprocess", nested) == {"qwen3_vl_embedding", "outer"}
    cyclic = {"a": ("b",), "b": ("a",)}  # tritonserver refuses it; the walk must still end
    assert ensembles_over("a", cyclic) == {"a", "b"}


def test_after_a_reload_every_ensemble_over_it_must_be_ready():
    reloaded = "qwen3_vl_embedding_model"
    assert unready_ensembles(reloaded, ALL_READY, ENSEMBLES, set()) == []
    # The ensemble left unloaded (the gap of issue #10: /v2/health/ready 200 while it answers 404).
    states = {**ALL_READY, "qwen3_vl_embedding": "UNAVAILABLE"}
    assert unready_ensembles(reloaded, states, ENSEMBLES, set()) == ["qwen3_vl_embedding"]
    # Or one of its other steps not serving.
    states = {**ALL_READY, "qwen3_vl_embedding_preprocess": "UNLOADING"}
    assert unready_ensembles(reloaded, states, ENSEMBLES, set()) == ["qwen3_vl_embedding"]
    # A model missing from the index counts as not ready.
    states = {k: v for k, v in ALL_READY.items() if k != "qwen3_vl_embedding"}
    assert unready_ensembles(reloaded, states, ENSEMBLES, set()) == ["qwen3_vl_embedding"]


def test_only_the_ensembles_over_the_reloaded_model_are_checked():
    states = {**ALL_READY, "qwen3_vl_reranker": "UNAVAILABLE"}
    assert unready_ensembles("qwen3_vl_embedding_model", states, ENSEMBLES, set()) == []
    assert unready_ensembles("qwen3_vl_reranker_model", states, ENSEMBLES, set()) == ["qwen3_vl_reranker"]


def test_an_ensemble_whose_other_step_is_being_repaired_is_left_to_that_repair():
    states = {**ALL_READY, "qwen3_vl_embedding_preprocess": "UNLOADING", "qwen3_vl_embedding": "UNAVAILABLE"}
    repairing = {"qwen3_vl_embedding_preprocess"}
    assert unready_ensembles("qwen3_vl_embedding_model", states, ENSEMBLES, repairing) == []
    # The reloaded model itself may still be listed as repairing: it does not excuse its own ensemble.
    repairing = {"qwen3_vl_embedding_model"}
    assert unready_ensembles("qwen3_vl_embedding_model", states, ENSEMBLES, repairing) == [
        "qwen3_vl_embedding"
    ]


def test_a_restart_the_watchdog_asks_for_counts_like_a_crash():
    crashes = CrashCount()
    assert crashes.record(up_seconds=5.0) == 1.0  # e.g. a stub past its reload cap
    assert crashes.record(up_seconds=5.0) == 2.0  # then tritonserver died: the row goes on
    assert crashes.record(up_seconds=5.0) == 4.0
    assert crashes.total == 3
    assert crashes.record(up_seconds=STABLE_SECS + 1) == 1.0  # it served a while: a new row
    assert (crashes.total, crashes.in_a_row) == (4, 1)


def test_restart_backoff_is_capped():
    crashes = CrashCount()
    delays = [crashes.record(up_seconds=1.0) for _ in range(10)]
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0]
    assert max(delays) == delays[-1] == RESTART_BACKOFF_MAX_SECS


def test_test_servers_get_ports_outside_the_range_of_outgoing_connections():
    """A restarted server binds its ports again; one of the ephemeral range may meanwhile be a client's."""
    ports = free_ports(30)
    assert len(set(ports)) == 30
    assert all(FREE_PORT_LOWEST <= port < ephemeral_port_range()[0] for port in ports), ports
