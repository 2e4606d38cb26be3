"""Refusal latency under overload (issue 19, item 3): is a request that will not be served in time refused
when that becomes known (milliseconds), not when its timeout expires? With short and with long texts,
straight to Triton over gRPC and through the gateway.

    python -m perf.drills.refusal [--seconds 15] [--multiple 4] [--texts short,long]
                                  [--paths grpc,gateway,gateway-latency]
    python -m perf.drills.reliability --only refusal      (make reliability's "refusal" phase)

One tritonserver (the embedding ensemble, tiny checkpoint unless MODEL_PATH is set; or the launcher's, from
perf.drills.reliability) and, per gateway path, a fresh gateway in front of it (its defaults; the latency
profile). For each path and text length (short: ~200 tokens, long: ~3,000 tokens, one row per request):

1. capacity: a closed loop of ``--concurrency`` requests in flight for ``--capacity-seconds``: answers/s;
2. overload: an open loop at ``--multiple`` x that for ``--seconds`` (requests start on schedule whatever
   the answers), then until every answer is in.

Per leg: answers by kind (OK, refused = UNAVAILABLE / 503, other), refusal and admitted p50 / p99, what
refused (the refusal messages by kind), RSS of tritonserver's process group and of the gateway before /
peak / after, and the load average. Writes refusal.{json,md} into today's results directory.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from backend.protocol import EMBEDDING_ENSEMBLE
from perf.lib import loops
from perf.lib.console import add_out_argument, command_parser, log, parse_list, table
from perf.lib.record import Experiment
from perf.lib.sampling import RssSampler, percentiles

SENTENCE = "The quick brown fox jumps over the lazy dog while the river runs past the old mill. "
# ~200 and ~3,000 tokens: the tiny model's forward of a long text costs ~15x a short one's.
TEXTS = {"short": SENTENCE * 11, "long": SENTENCE * 170}
# path -> the gateway's settings (None: straight to Triton over gRPC).
PATHS: dict[str, dict[str, str] | None] = {
    "grpc": None,
    "gateway": {},  # the defaults: throughput first, a 2 s burst allowance
    # docs/overload.md "The latency profile": overload told from a burst after 1 s, nobody waits then.
    "gateway-latency": {"GATEWAY_LATENCY_TARGET_RATIO": "1.25", "GATEWAY_BURST_SECONDS": "1"},
}
# Scheduled requests are skipped (counted) once this many are open: each holds a socket.
MAX_OPEN = 15_000
# What a refusal says, by who refused it (the steps' messages: backend.backpressure; the gateway's own:
# gateway.admission; Triton's queue policy at the preprocess step).
REFUSAL_KINDS = (
    ("expected wait (preprocess step)", "expected wait"),
    ("queued requests (preprocess step)", "wait for it"),
    ("waited past the queue timeout (model step)", "over its queue timeout"),
    ("Triton's queue policy (preprocess step)", "timeout expired"),
    ("Triton's queue policy (preprocess step)", "maximum queue size"),
    ("gateway admission", "server overloaded"),
)

# One request: (kind "ok" / "refused" / "other", the refusal's or the error's message).
Send = Callable[[int], Awaitable[tuple[str, str]]]


@dataclass
class Leg:
    path: str
    text: str
    capacity_per_s: float = 0.0
    offered_per_s: float = 0.0
    seconds: float = 0.0
    sent: int = 0
    ok: int = 0
    refused: int = 0
    other: int = 0
    skipped: int = 0
    other_examples: list[str] = field(default_factory=list)
    refused_by: dict[str, int] = field(default_factory=dict)
    ok_latency_ms: dict[str, float] = field(default_factory=dict)
    refused_latency_ms: dict[str, float] = field(default_factory=dict)
    server_rss_mib: list[float] = field(default_factory=list)  # start, peak, end of the overload
    gateway_rss_mib: list[float] = field(default_factory=list)
    load_before: float = 0.0
    load_after: float = 0.0


def refusal_kind(message: str) -> str:
    for kind, marker in REFUSAL_KINDS:
        if marker in message:
            return kind
    return "other message"


def grpc_sender(url: str, text: str) -> tuple[Send, Callable[[], Awaitable[None]]]:
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url)

    async def send(index: int) -> tuple[str, str]:
        tensor = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[f"{index}. {text}".encode()]], dtype=object))
        try:
            await client.infer(EMBEDDING_ENSEMBLE, [tensor], client_timeout=300)
        except InferenceServerException as error:
            kind = "refused" if "UNAVAILABLE" in str(error.status()) else "other"
            return kind, f"{error.status()}: {error.message()}"
        return "ok", ""

    return send, client.close


def gateway_sender(url: str, text: str, session) -> Send:
    import aiohttp

    from perf.lib.gateway_load import request_bodies

    async def send(index: int) -> tuple[str, str]:
        [body] = request_bodies([f"{index}. {text}"], model=EMBEDDING_ENSEMBLE)
        try:
            async with session.post(
                f"{url}/v1/embeddings", data=body, headers={"Content-Type": "application/json"}
            ) as response:
                answer = await response.read()
                status = response.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            return "other", f"{type(error).__name__}: {error}"
        if status == 200:
            return "ok", ""
        kind = "refused" if status == 503 else "other"
        return kind, f"HTTP {status}: {answer[:300].decode(errors='replace')}"

    return send


class Tally:
    def __init__(self) -> None:
        self.ok: list[float] = []
        self.refused: list[float] = []
        self.messages: Counter[str] = Counter()
        self.other: list[str] = []
        self.sent = 0

    async def one(self, send: Send) -> None:
        self.sent += 1
        started = time.perf_counter()
        kind, message = await send(self.sent)
        seconds = time.perf_counter() - started
        if kind == "ok":
            self.ok.append(seconds)
        elif kind == "refused":
            self.refused.append(seconds)
            self.messages[refusal_kind(message)] += 1
        else:
            self.other.append(message[:200])

    @property
    def open(self) -> int:
        return self.sent - len(self.ok) - len(self.refused) - len(self.other)


async def closed_loop(send: Send, concurrency: int, seconds: float) -> Tally:
    tally = Tally()
    deadline = time.perf_counter() + seconds

    await loops.until(lambda: tally.one(send), deadline, concurrency)
    return tally


async def open_loop(send: Send, rate: float, seconds: float) -> tuple[Tally, int]:
    """Requests on a fixed schedule whatever the answers; (the tally, requests skipped at MAX_OPEN)."""
    tally = Tally()
    tasks = []
    skipped = 0
    start = time.perf_counter()
    for index in range(int(rate * seconds)):
        delay = start + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if tally.open >= MAX_OPEN:
            skipped += 1
            continue
        tasks.append(asyncio.ensure_future(tally.one(send)))
    await asyncio.gather(*tasks)
    return tally, skipped


async def run_leg(
    leg: Leg, send: Send, pgids: tuple[int, int], concurrency: int, capacity_s: float, seconds: float,
    multiple: float,
) -> Leg:  # fmt: skip
    for index in range(4):  # warm-up: connections, and the model step measures its rate
        await send(-1 - index)
    capacity = await closed_loop(send, concurrency, capacity_s)
    leg.capacity_per_s = round(len(capacity.ok) / capacity_s, 1)
    leg.offered_per_s = round(max(1.0, leg.capacity_per_s) * multiple, 1)
    await asyncio.sleep(2.0)  # the capacity run's queue drains
    leg.load_before = round(os.getloadavg()[0], 2)
    started = time.perf_counter()
    gc.collect()
    gc.disable()  # a collection here would stall every open request and count as the server's latency
    try:
        with RssSampler(*pgids) as sampler:
            overload, leg.skipped = await open_loop(send, leg.offered_per_s, seconds)
    finally:
        gc.enable()
    await asyncio.sleep(2.0)
    end = sampler.rss()
    leg.seconds = round(time.perf_counter() - started, 2)
    leg.load_after = round(os.getloadavg()[0], 2)
    leg.sent, leg.ok, leg.refused, leg.other = (
        overload.sent, len(overload.ok), len(overload.refused), len(overload.other),
    )  # fmt: skip
    leg.other_examples = overload.other[:3]
    leg.refused_by = dict(overload.messages.most_common())
    leg.ok_latency_ms = percentiles(overload.ok)
    leg.refused_latency_ms = percentiles(overload.refused)
    leg.server_rss_mib = [sampler.start[0], round(max(sampler.peaks[0], end[0]), 1), end[0]]
    if pgids[1] != pgids[0]:
        leg.gateway_rss_mib = [sampler.start[1], round(max(sampler.peaks[1], end[1]), 1), end[1]]
    log(f"refusal {leg.path}/{leg.text}: {json.dumps(asdict(leg))}")
    return leg


async def measure(
    grpc_url: str,
    server_pgid: int,
    texts: list[str],
    paths: list[str],
    log_dir: Path,
    concurrency: int = 64,
    capacity_s: float = 8.0,
    seconds: float = 15.0,
    multiple: float = 4.0,
) -> list[Leg]:
    """Every (path, text) leg against one tritonserver (`server_pgid`: its process group), a fresh gateway
    per gateway path."""
    import aiohttp

    from tools.gateway_process import GatewayProcess

    legs = []
    for path in paths:
        environment = PATHS[path]
        if environment is None:
            for text in texts:
                send, close = grpc_sender(grpc_url, TEXTS[text])
                try:
                    legs.append(
                        await run_leg(
                            Leg(path, text), send, (server_pgid, server_pgid), concurrency, capacity_s,
                            seconds, multiple,
                        )
                    )  # fmt: skip
                finally:
                    await close()
            continue
        gateway = GatewayProcess(grpc_url, environment, log_dir / f"{path}.log").start()
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=400)
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                for text in texts:
                    send = gateway_sender(gateway.url, TEXTS[text], session)
                    legs.append(
                        await run_leg(
                            Leg(path, text), send, (server_pgid, gateway.pid), concurrency, capacity_s,
                            seconds, multiple,
                        )
                    )  # fmt: skip
        finally:
            gateway.stop()
    return legs


def raise_file_limit() -> None:
    """An open loop keeps thousands of requests open, each a socket through the gateway."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _ms(values: dict[str, float], key: str) -> str:
    return f"{values[key]:,.0f}" if key in values and values[key] >= 10 else str(values.get(key, "-"))


def leg_table(legs: list[Leg]) -> list[str]:
    return table(
        (
            "path", "text", "capacity/s", "offered/s", "sent", "OK", "refused", "other",
            "refused p50 / p99 ms", "admitted p50 / p99 ms", "server RSS MiB start / peak / end",
            "gateway RSS MiB start / peak / end", "load 1 min before / after",
        ),
        (
            (
                leg.path, leg.text, leg.capacity_per_s, leg.offered_per_s, leg.sent, leg.ok, leg.refused,
                leg.other,
                f"{_ms(leg.refused_latency_ms, 'p50')} / {_ms(leg.refused_latency_ms, 'p99')}",
                f"{_ms(leg.ok_latency_ms, 'p50')} / {_ms(leg.ok_latency_ms, 'p99')}",
                " / ".join(str(value) for value in leg.server_rss_mib),
                " / ".join(str(value) for value in leg.gateway_rss_mib) or "-",
                f"{leg.load_before} / {leg.load_after}",
            )
            for leg in legs
        ),
    )  # fmt: skip


def write_report(experiment: Experiment, legs: list[Leg], **extra: object) -> None:
    report = experiment.report(**extra, legs=[asdict(leg) for leg in legs])
    experiment.write_json("refusal.json", report)
    worst = max((leg.refused_latency_ms.get("p99", 0.0) for leg in legs), default=0.0)
    lines = [
        *experiment.heading("Refusal latency at ~4x capacity", report),
        "One row per request: short ~200-token and long ~3,000-token texts, over gRPC straight to the "
        "embedding ensemble and as `/v1/embeddings` through the gateway, with its default settings "
        "(`gateway`) and with the latency profile (`gateway-latency`: `GATEWAY_LATENCY_TARGET_RATIO=1.25 "
        "GATEWAY_BURST_SECONDS=1`), a fresh gateway each. Capacity: a "
        "closed loop of 64 in flight; overload: an open loop at 4x that, then until every answer is in. "
        "The client shares the host's cores with the server (and, on a shared host, with other work: see "
        "the load averages).",
        "",
        *leg_table(legs),
        "",
        f"- Worst refusal p99: {worst:,.0f} ms (goal: 1,000 ms).",
        "- Who refused:",
        *[
            f"  - {leg.path}/{leg.text}: "
            + (", ".join(f"{kind} {count}" for kind, count in leg.refused_by.items()) or "none")
            for leg in legs
        ],
        *[
            f"- {leg.path}/{leg.text} other answers: {'; '.join(leg.other_examples)}"
            for leg in legs
            if leg.other
        ],
        "",
    ]
    experiment.write_markdown("refusal.md", lines, echo=True)


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("perf.drills.refusal", __doc__)
    parser.add_argument("--multiple", type=float, default=4.0, help="overload = this many times capacity")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each overload")
    parser.add_argument("--capacity-seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=64, help="in flight for the capacity runs")
    parser.add_argument("--texts", type=parse_list, default=list(TEXTS), help=", ".join(TEXTS))
    parser.add_argument("--paths", type=parse_list, default=list(PATHS), help=", ".join(PATHS))
    add_out_argument(parser)
    args = parser.parse_args(argv)
    experiment = Experiment("perf.drills.refusal", argv, args.out)
    raise_file_limit()
    from perf.lib.paths import REPO
    from tools.triton_server import TritonServer

    log_dir = experiment.out / "raw" / "refusal"
    log_dir.mkdir(parents=True, exist_ok=True)
    server = TritonServer(
        REPO / "model_repository",
        extra_args=["--model-control-mode=explicit", f"--load-model={EMBEDDING_ENSEMBLE}"],
        startup_timeout=900,
    )
    with server:
        assert server.pid is not None  # started
        legs = asyncio.run(
            measure(
                server.grpc_url, server.pid, args.texts, args.paths, log_dir, args.concurrency,
                args.capacity_seconds, args.seconds, args.multiple,
            )
        )  # fmt: skip
    write_report(experiment, legs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
