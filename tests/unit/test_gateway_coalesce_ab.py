"""perf.experiments.gateway_coalesce_ab's pairing of windows (no servers)."""

from __future__ import annotations

from perf.experiments.gateway_coalesce_ab import summarize


def window(mode: str, throughput: float, concurrency: int = 16, rows: float = 1.0) -> dict:
    cores = {"tritonserver + stubs": throughput * 0.008, "gateway": throughput * 0.0005}
    return {
        "mode": mode,
        "concurrency": concurrency,
        "throughput": throughput,
        "ok": True,
        "cpu_cores": cores,
        "rows_per_call": rows,
    }


def test_adjacent_windows_pair_whatever_their_order():
    windows = [window("off", 100.0), window("on", 120.0, rows=4.0), window("on", 90.0), window("off", 100.0)]
    windows += [window("off", 50.0, concurrency=64)]
    row = summarize(windows, 16)
    assert row["ratios_on_over_off"] == [1.2, 0.9]
    assert row["median_ratio"] == 1.05
    assert row["on"]["rows_per_call"] == 2.5 and row["off"]["req_per_s"] == 100.0
    assert row["on"]["server_cpu_ms"] == 8.0 and row["on"]["gateway_cpu_ms"] == 0.5
    assert summarize(windows, 64)["ratios_on_over_off"] == []
