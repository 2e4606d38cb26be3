"""Overload test: does the served embedding ensemble shed the excess fast, with bounded memory?

    python -m perf.drills.overload [--multiple 4] [--seconds 20] [--concurrency 64] [--out DIR]
    make overload

Starts tritonserver on model_repository/ (the embedding ensemble, tiny checkpoint unless MODEL_PATH is
set) and drives it over gRPC from one asyncio client with single-row ~200-token text requests:

1. unloaded: one request at a time (p50/p99 of an idle server);
2. capacity: a closed loop of ``--concurrency`` requests in flight (what the server sustains, and its
   p99 when full but not overloaded; the gateway keeps up to 256 in flight);
3. overload: an open loop sending ``--multiple`` x capacity requests per second for ``--seconds``.

It reports the answers by status (OK / UNAVAILABLE / other), latency of admitted and of refused
requests, and the server's memory (RSS of tritonserver and its stubs) before and at peak. The client
runs on the same cores as the server and takes CPU from it. Results go to
perf/results/<host>/<date>/overload.{json,md}.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from backend.protocol import EMBEDDING_ENSEMBLE
from perf.lib import loops
from perf.lib.console import add_out_argument, command_parser, table
from perf.lib.paths import REPO
from perf.lib.record import Experiment
from perf.lib.sampling import RssSampler, group_rss_mib, percentiles
from tools.triton_server import TritonServer

ENSEMBLE = EMBEDDING_ENSEMBLE
# ~200 tokens of plain English; a per-request number keeps requests distinct.
SENTENCE = "The quick brown fox jumps over the lazy dog while the river runs past the old mill. "


@dataclass
class Phase:
    name: str
    offered_per_s: float | None
    seconds: float
    sent: int = 0
    ok: int = 0
    unavailable: int = 0
    other: int = 0
    other_examples: list[str] = field(default_factory=list)
    ok_per_s: float = 0.0
    ok_latency_ms: dict[str, float] = field(default_factory=dict)
    refused_latency_ms: dict[str, float] = field(default_factory=dict)
    rss_mib_start: float = 0.0
    rss_mib_peak: float = 0.0
    rss_mib_end: float = 0.0


class Driver:
    def __init__(self, url: str) -> None:
        import tritonclient.grpc.aio as grpcclient

        self.module = grpcclient
        self.client = grpcclient.InferenceServerClient(url)
        self.counter = 0

    def inputs(self):
        self.counter += 1
        text = f"{self.counter}. " + SENTENCE * 11
        tensor = self.module.InferInput("TEXT", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
        return [tensor]

    async def one(self, phase: Phase, ok: list[float], refused: list[float]) -> None:
        from tritonclient.utils import InferenceServerException

        phase.sent += 1
        started = time.perf_counter()
        try:
            await self.client.infer(ENSEMBLE, self.inputs(), client_timeout=120)
        except InferenceServerException as error:
            if "UNAVAILABLE" in str(error.status()):
                phase.unavailable += 1
                refused.append(time.perf_counter() - started)
            else:
                phase.other += 1
                if len(phase.other_examples) < 3:
                    phase.other_examples.append(f"{error.status()}: {error.message()}"[:200])
            return
        phase.ok += 1
        ok.append(time.perf_counter() - started)

    async def closed_loop(self, phase: Phase, concurrency: int) -> tuple[list[float], list[float]]:
        ok: list[float] = []
        refused: list[float] = []
        deadline = time.perf_counter() + phase.seconds

        await loops.until(lambda: self.one(phase, ok, refused), deadline, concurrency)
        return ok, refused

    async def open_loop(self, phase: Phase, rate: float) -> tuple[list[float], list[float]]:
        """Requests start on a fixed schedule whatever the answers: the excess must be refused."""
        ok: list[float] = []
        refused: list[float] = []
        tasks = []
        start = time.perf_counter()
        count = int(rate * phase.seconds)
        for index in range(count):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(self.one(phase, ok, refused)))
        await asyncio.gather(*tasks)
        return ok, refused


async def run_phase(driver: Driver, server_pgid: int, phase: Phase, concurrency: int | None) -> Phase:
    started = time.perf_counter()
    with RssSampler(server_pgid) as rss:
        phase.rss_mib_start = round(rss.peak, 1)
        if phase.offered_per_s is None:
            ok, refused = await driver.closed_loop(phase, concurrency or 1)
        else:
            ok, refused = await driver.open_loop(phase, phase.offered_per_s)
    elapsed = time.perf_counter() - started
    phase.seconds = round(elapsed, 2)
    phase.ok_per_s = round(phase.ok / elapsed, 1)
    phase.ok_latency_ms = percentiles(ok)
    phase.refused_latency_ms = percentiles(refused)
    phase.rss_mib_peak = round(rss.peak, 1)
    phase.rss_mib_end = round(group_rss_mib(server_pgid), 1)
    print(f"{phase.name}: {json.dumps(asdict(phase))}", flush=True)
    return phase


def queue_settings() -> dict[str, str]:
    """The queue policies under test, as written in the configs."""
    settings = {}
    for name in (f"{ENSEMBLE}_preprocess", f"{ENSEMBLE}_model"):
        lines = (REPO / "model_repository" / name / "config.pbtxt").read_text().splitlines()
        text = "\n".join(line.split("#", 1)[0] for line in lines)
        start = text.find("dynamic_batching")
        block = text[start : text.find("\n}\n", start) + 2] if start >= 0 else "(none)"
        # The model step's queue is bounded by the steps themselves (backend.backpressure): max_model_queue
        # (preprocess) and queue_timeout_seconds (model), as parameters, not the comments that name them.
        block += "".join(
            f" {line}"
            for line in lines
            if line.startswith("parameters")
            and ("max_model_queue" in line or "queue_timeout_seconds" in line)
        )
        settings[name] = " ".join(block.split())
    return settings


async def measure(
    grpc_url: str, server_pgid: int, unloaded_s: float, seconds: float, multiple: float, concurrency: int
) -> list[Phase]:
    """The four phases against one server (also reliability's third part): unloaded, capacity at
    `concurrency` in flight, an open loop at `multiple` x that capacity, and after."""
    driver = Driver(grpc_url)
    await driver.closed_loop(Phase("warm-up", None, 3.0), 8)
    unloaded = await run_phase(driver, server_pgid, Phase("unloaded (1 in flight)", None, unloaded_s), 1)
    capacity = await run_phase(
        driver, server_pgid, Phase(f"capacity ({concurrency} in flight)", None, seconds), concurrency
    )
    rate = capacity.ok_per_s * multiple
    overload = await run_phase(
        driver, server_pgid, Phase(f"overload ({multiple:g}x capacity)", rate, seconds), None
    )
    await asyncio.sleep(2.0)
    after = await run_phase(driver, server_pgid, Phase("after (1 in flight)", None, 3.0), 1)
    await driver.client.close()
    return [unloaded, capacity, overload, after]


def phase_table(phases: list[Phase]) -> list[str]:
    """The phases as a markdown table (also in reliability.md)."""
    header = "phase|offered req/s|sent|OK|UNAVAILABLE|other|OK/s|OK p50 / p99 ms|refused p50 / p99 ms"
    return table(
        (*header.split("|"), "RSS MiB start / peak / end"),
        (
            (
                phase.name,
                round(phase.offered_per_s) if phase.offered_per_s else "-",
                phase.sent,
                phase.ok,
                phase.unavailable,
                phase.other,
                phase.ok_per_s,
                f"{phase.ok_latency_ms.get('p50', '-')} / {phase.ok_latency_ms.get('p99', '-')}",
                f"{phase.refused_latency_ms.get('p50', '-')} / {phase.refused_latency_ms.get('p99', '-')}",
                f"{phase.rss_mib_start} / {phase.rss_mib_peak} / {phase.rss_mib_end}",
            )
            for phase in phases
        ),
    )


def write_report(experiment: Experiment, phases: list[Phase]) -> None:
    unloaded, capacity, overload, after = phases
    report = experiment.report(queue_policies=queue_settings(), phases=[asdict(phase) for phase in phases])
    experiment.write_json("overload.json", report)
    rows = phase_table(phases)
    p99 = overload.ok_latency_ms.get("p99", float("nan"))
    refused_ms = overload.refused_latency_ms
    lines = [
        *experiment.heading(f"Overload: {ENSEMBLE}, {os.cpu_count()} cores, {report['started']}", report),
        "Single-row ~200-token text requests over gRPC from one asyncio client on the same cores. Queue "
        "policies served:",
        "",
        *[f"- `{name}`: `{block}`" for name, block in report["queue_policies"].items()],
        "",
        *rows,
        "",
        f"- Refused under overload: {overload.unavailable} of {overload.sent} "
        f"({overload.unavailable / max(1, overload.sent):.0%}), answered UNAVAILABLE in "
        f"{refused_ms.get('p50', '-')} ms (p50) / {refused_ms.get('p99', '-')} ms (p99); other errors: "
        f"{overload.other}.",
        f"- Admitted p99 under overload {p99} ms = {p99 / capacity.ok_latency_ms['p99']:.2f}x the p99 at "
        f"capacity ({capacity.ok_latency_ms['p99']} ms) and {p99 / unloaded.ok_latency_ms['p99']:.1f}x the "
        f"unloaded p99 ({unloaded.ok_latency_ms['p99']} ms).",
        f"- Server RSS: {capacity.rss_mib_start} MiB before the capacity run, peak {overload.rss_mib_peak} "
        f"MiB under overload, {after.rss_mib_end} MiB after.",
        "",
    ]
    experiment.write_markdown("overload.md", lines, echo=True)


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("perf.drills.overload", __doc__)
    parser.add_argument("--multiple", type=float, default=4.0, help="overload = this many times capacity")
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="length of the capacity and overload runs"
    )
    parser.add_argument("--unloaded-seconds", type=float, default=8.0)
    parser.add_argument(
        "--concurrency", type=int, default=256, help="in flight for the capacity run (the gateway: 256)"
    )
    add_out_argument(parser)
    args = parser.parse_args(argv)
    experiment = Experiment("perf.drills.overload", argv, args.out)
    server = TritonServer(
        REPO / "model_repository",
        extra_args=["--model-control-mode=explicit", f"--load-model={ENSEMBLE}"],
        startup_timeout=900,
    )
    with server:
        assert server.pid is not None  # started
        phases = asyncio.run(
            measure(
                server.grpc_url,
                server.pid,
                args.unloaded_seconds,
                args.seconds,
                args.multiple,
                args.concurrency,
            )
        )
    write_report(experiment, phases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
