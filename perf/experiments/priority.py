"""Priority classes (issue 20, item 2): a short text query's latency alone and beside a bulk job that
saturates the server, the bulk marked as bulk and, for contrast, unmarked; and the bulk job's throughput
with and without the queries beside it.

One tritonserver (model_repository as it is), phases interleaved round by round so that the other work on a
shared machine lands on every phase alike:

- `query alone`: one short text at a time, a random 0-0.2 s pause between (seeded: a fixed pause phase-locks
  with the forwards);
- `bulk alone` (marked, and unmarked): the bulk job's client (qwen3vl_client.EmbeddingClient, the
  `qwen3vl index` defaults: 32 items per request, 4 in flight) embedding distinct ~80-token documents, in a
  process of its own as a real job is (in this one its client would take the query client's GIL);
- `bulk + queries` (marked, and unmarked): both at once.

Each phase records the 1-minute load average at its end and the server's CPU seconds (its process tree),
so that bulk items per server CPU second can be compared where items per second are too noisy.

    python -m perf.experiments.priority [--rounds 3] [--seconds 20] [--priority -10] [--out DIR]
    # DIR/priority.{json,md}; --priority: the autogroup nice of the server and this process (root)
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpc

from backend.protocol import EMBEDDING_ENSEMBLE
from perf.lib.console import add_out_argument, add_priority_argument, code_block, command_parser, log, table
from perf.lib.record import Experiment
from perf.lib.server_stats import cpu_seconds_by_role
from qwen3vl_client import EmbeddingClient
from qwen3vl_client.options import PriorityClass
from tools.triton_server import TritonServer

REPO = Path(__file__).resolve().parents[2]
QUERY = b"what is the capital of France?"
BATCH_SIZE, IN_FLIGHT = 32, 4  # qwen3vl index's defaults
CHUNK = 256  # items per embed() call of the bulk loop (the client keeps IN_FLIGHT requests going inside)
PHASES = ("query alone", "bulk alone", "bulk + queries", "unmarked bulk alone", "unmarked bulk + queries")


def ms(seconds: list[float], percentile: float) -> float:
    return round(float(np.percentile(seconds, percentile)) * 1000, 1)


class Documents:
    """Distinct documents (no two alike: nothing is answered from a cache), ~80 tokens each."""

    def __init__(self, start: int = 0) -> None:
        self.counter = itertools.count(start)

    def chunk(self) -> list[str]:
        return [
            " ".join(f"document {n} part {part} of the corpus" for part in range(10))
            for n in itertools.islice(self.counter, CHUNK)
        ]


def query_loop(url: str, until: float, seed: int) -> list[float]:
    client = grpc.InferenceServerClient(url)
    text = grpc.InferInput("TEXT", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[QUERY]], dtype=object))
    pauses = np.random.default_rng(seed)
    seconds = []
    try:
        while time.monotonic() < until:
            start = time.perf_counter()
            client.infer(EMBEDDING_ENSEMBLE, [text])
            seconds.append(time.perf_counter() - start)
            time.sleep(pauses.uniform(0.0, 0.2))
    finally:
        client.close()
    return seconds


def bulk_loop(url: str, priority: PriorityClass, until: float, first: int, results: Any) -> None:
    """The bulk job (a child process): puts (items embedded, seconds) on `results`, whole chunks started
    before `until` (time.monotonic() is one clock for every process of the host)."""
    documents = Documents(first)
    items, start = 0, time.perf_counter()
    with EmbeddingClient(
        url, "grpc", batch_size=BATCH_SIZE, max_concurrency=IN_FLIGHT, priority=priority
    ) as client:
        while time.monotonic() < until:
            items += len(client.embed(texts=documents.chunk()))
    results.put((items, time.perf_counter() - start))


def phase(server: TritonServer, name: str, seconds: float, first: int, seed: int) -> dict[str, Any]:
    """One phase; `first`: the number of the bulk job's first document (distinct in every phase)."""
    cpu_before = sum(cpu_seconds_by_role(server.pid).values()) if server.pid else 0.0
    until = time.monotonic() + seconds
    result: dict[str, Any] = {"phase": name}
    context = multiprocessing.get_context("spawn")  # no fork of this process's gRPC channels
    results = context.Queue()
    worker = None
    if "bulk" in name:
        priority: PriorityClass = "interactive" if name.startswith("unmarked") else "bulk"
        worker = context.Process(target=bulk_loop, args=(server.grpc_url, priority, until, first, results))
        worker.start()
    if "quer" in name:
        if worker is not None:
            time.sleep(2.0)  # the bulk job at full speed first
        latencies = query_loop(server.grpc_url, until, seed)
        result.update(query_p50_ms=ms(latencies, 50), query_p99_ms=ms(latencies, 99), queries=len(latencies))
    if worker is not None:
        items, elapsed = results.get(timeout=seconds + 600)
        worker.join()
        result.update(bulk_items=items, bulk_items_per_s=round(items / elapsed, 1))
    cpu = (sum(cpu_seconds_by_role(server.pid).values()) if server.pid else 0.0) - cpu_before
    result.update(server_cpu_s=round(cpu, 1), load_1m_after=round(os.getloadavg()[0], 2))
    if "bulk_items" in result and result["bulk_items"]:
        result["bulk_items_per_server_cpu_s"] = round(result["bulk_items"] / cpu, 2)
    log(f"{name}: {result}")
    return result


def summary(rounds: list[list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Per phase, the median over rounds of each figure."""
    out: dict[str, dict[str, float]] = {}
    for name in PHASES:
        runs = [entry for round_ in rounds for entry in round_ if entry["phase"] == name]
        keys = [key for key in runs[0] if key != "phase"]
        out[name] = {key: round(statistics.median(run[key] for run in runs), 2) for key in keys}
    return out


def ratios(rounds: list[list[dict[str, Any]]]) -> dict[str, list[float]]:
    """Per round (each ratio within one round: the load of that minute cancels out)."""
    out: dict[str, list[float]] = {
        "marked: query p50 / alone": [],
        "unmarked: query p50 / alone": [],
        "marked: bulk throughput with queries / alone": [],
        "unmarked: bulk throughput with queries / alone": [],
        "bulk throughput marked / unmarked (alone)": [],
    }
    for round_ in rounds:
        by = {entry["phase"]: entry for entry in round_}
        alone = by["query alone"]["query_p50_ms"]
        out["marked: query p50 / alone"].append(round(by["bulk + queries"]["query_p50_ms"] / alone, 2))
        out["unmarked: query p50 / alone"].append(
            round(by["unmarked bulk + queries"]["query_p50_ms"] / alone, 2)
        )
        out["marked: bulk throughput with queries / alone"].append(
            round(by["bulk + queries"]["bulk_items_per_s"] / by["bulk alone"]["bulk_items_per_s"], 2)
        )
        out["unmarked: bulk throughput with queries / alone"].append(
            round(
                by["unmarked bulk + queries"]["bulk_items_per_s"]
                / by["unmarked bulk alone"]["bulk_items_per_s"],
                2,
            )
        )
        out["bulk throughput marked / unmarked (alone)"].append(
            round(by["bulk alone"]["bulk_items_per_s"] / by["unmarked bulk alone"]["bulk_items_per_s"], 2)
        )
    return out


def markdown(experiment: Experiment, report: dict[str, Any]) -> list[str]:
    lines = experiment.heading("Priority classes: a query beside a bulk job", report)
    lines += [
        f"Scheduling priority (autogroup nice of server and clients): {report['scheduling_priority']}. "
        f"One tritonserver, {report['rounds']} rounds of {len(PHASES)} phases of {report['seconds']} s, "
        "interleaved. Query: one short text at a time (random 0-0.2 s pause). Bulk: the client library "
        f"as `qwen3vl index` uses it ({BATCH_SIZE} items per request, {IN_FLIGHT} in flight), distinct "
        '~80-token documents, marked `priority="bulk"` or unmarked. Median over rounds:',
        "",
    ]
    rows = []
    for name, figures in report["summary"].items():
        rows.append(
            [
                name,
                figures.get("query_p50_ms", ""),
                figures.get("query_p99_ms", ""),
                figures.get("bulk_items_per_s", ""),
                figures.get("bulk_items_per_server_cpu_s", ""),
                figures.get("load_1m_after", ""),
            ]
        )
    lines += table(
        ["phase", "query p50 ms", "query p99 ms", "bulk items/s", "bulk items / server CPU s", "load 1m"],
        rows,
    )
    lines += [
        "",
        "Ratios within each round (goal: marked query p50 <= 2x alone; bulk throughput >= 0.9):",
        "",
    ]
    lines += table(["ratio", "per round"], [[name, values] for name, values in report["ratios"].items()])
    lines += [""]
    lines += code_block(
        "Every phase",
        [str(entry) for round_ in report["per_round"] for entry in round_],
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("perf.experiments.priority", __doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    add_priority_argument(parser)
    add_out_argument(parser)
    args = parser.parse_args(argv)
    experiment = Experiment("perf.experiments.priority", argv, args.out)
    with TritonServer(REPO / "model_repository") as server:  # logs to a temporary file
        if args.priority:
            # The server leads a session of its own: its autogroup's nice is what counts against other
            # sessions' work (perf/README.md, "--priority").
            for pid in (server.pid, os.getpid()):
                Path(f"/proc/{pid}/autogroup").write_text(str(args.priority))
        with EmbeddingClient(server.grpc_url, "grpc") as warm:
            warm.embed(texts=Documents(-CHUNK).chunk())
        rounds = []
        for round_index in range(args.rounds):
            rounds.append(
                [
                    phase(server, name, args.seconds, 10**7 * (round_index * len(PHASES) + k), round_index)
                    for k, name in enumerate(PHASES)
                ]
            )
    report = experiment.report(
        scheduling_priority=args.priority,
        rounds=args.rounds,
        seconds=args.seconds,
        summary=summary(rounds),
        ratios=ratios(rounds),
        per_round=rounds,
    )
    experiment.write_json("priority.json", report)
    print(f"wrote {experiment.write_markdown('priority.md', markdown(experiment, report))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
