"""RSS of the model stubs under a long mixed soak (issue 19, item 8): is it flat, or does it reach a ceiling?

    python -m perf.drills.stub_rss [--requests 20000] [--seed N] [--out DIR]

Starts ``python -m tools.launcher serve --no-gateway`` (what ``make serve`` runs; the environment of this
command reaches tritonserver and its stubs, so ``MALLOC_ARENA_MAX=8 python -m perf.drills.stub_rss`` is an
experiment) and sends ``--requests`` embedding requests over gRPC, 16 in flight, drawn from a seeded pool of
distinct ones: texts of 2 to 300 words in 1 to 3 rows, images of many sizes, short videos, text + image
rows. Every shape differs, which is what makes a model step's allocator grow in steps. The RSS of each stub
is read every 500 answers; the verdict compares the embedding model stub at request 1,000 with every later
reading: flat within 5 %, or the ceiling it reached.

``measure()`` is the phase of ``make reliability`` (perf.drills.reliability); ``main()`` runs it alone
and writes perf/results/<host>/<date>/stub-rss.{json,md}.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from perf.lib import loops
from perf.lib.console import add_out_argument, command_parser
from perf.lib.record import Experiment
from perf.lib.sampling import rss_mib
from tools.watchdog import live_stubs

EMBEDDING = "qwen3_vl_embedding"
WATCHED = "qwen3_vl_embedding_model"
IN_FLIGHT = 16
EVERY = 500
CHECKPOINTS = (1000, 5000, 10000, 20000)
FLAT_SHARE = 0.05
POOL = 240
RETRIES = 3
WORDS = "the river runs past an old mill where seven green herons wait for morning light".split()


def request_pool(seed: int, size: int = POOL) -> list[tuple[str, dict[str, np.ndarray]]]:
    """`size` seeded requests (kind, {input name: array}); texts of every length, images and videos of many
    sizes."""
    from tools import synthetic

    rng = random.Random(seed)

    def text(words: int) -> bytes:
        return " ".join(rng.choice(WORDS) for _ in range(words)).encode()

    def column(values: list[bytes]) -> np.ndarray:
        return np.array([[value] for value in values], dtype=object)

    pool: list[tuple[str, dict[str, np.ndarray]]] = []
    for index in range(size):
        draw = rng.random()
        if draw < 0.55:
            rows = rng.choice((1, 1, 2, 3))
            lengths = [int(rng.choice((3, 10, 40, 120, 300)) * rng.uniform(0.5, 1.0)) for _ in range(rows)]
            pool.append(("text", {"TEXT": column([text(length) for length in lengths])}))
        elif draw < 0.85:
            width, height = rng.randrange(32, 400, 8), rng.randrange(32, 400, 8)
            image = synthetic.encode_image(
                synthetic.photo(width, height, seed=index), rng.choice(("PNG", "JPEG"))
            )
            inputs = {"IMAGE": np.array([[image]], dtype=object)}
            if rng.random() < 0.3:
                inputs["TEXT"] = column([text(rng.randrange(3, 60))])
            pool.append(("image", inputs))
        else:
            width, height = rng.randrange(32, 161, 16), rng.randrange(32, 161, 16)
            seconds = rng.choice((1.0, 2.0))
            blob = synthetic.video(seconds=seconds, fps=4, width=width, height=height, seed=index)
            pool.append(("video", {"VIDEO": np.array([[blob]], dtype=object)}))
    return pool


def stub_memory(server_pid: int) -> dict[str, float]:
    """RSS (MiB) of each stub by model name; a model's second and later instances (the model steps run two
    on a CPU-only host: tools/repository.py) as `name#2`, ... in pid order, so the first keeps the name."""
    memory: dict[str, float] = {}
    for pid, model in sorted(live_stubs(server_pid).items(), key=lambda kv: (kv[1], kv[0])):
        key, number = model, 1
        while key in memory:
            number += 1
            key = f"{model}#{number}"
        memory[key] = rss_mib(pid)
    return memory


async def soak(grpc_url: str, server_pid: int, total: int, seed: int) -> dict:
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.utils import InferenceServerException

    pool = request_pool(seed)
    order = random.Random(seed + 1)
    schedule = [order.randrange(len(pool)) for _ in range(total)]
    client = grpcclient.InferenceServerClient(grpc_url)
    outcomes: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    readings: list[dict] = []
    answered = 0
    started = time.monotonic()

    async def one(index: int) -> None:
        nonlocal answered
        kind, arrays = pool[schedule[index]]
        inputs = []
        for name, array in arrays.items():
            tensor = grpcclient.InferInput(name, list(array.shape), "BYTES")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        for attempt in range(RETRIES + 1):
            try:
                await client.infer(EMBEDDING, inputs, client_timeout=120)
            except InferenceServerException as error:
                if "UNAVAILABLE" in str(error.status()) and attempt < RETRIES:
                    outcomes["retried-unavailable"] += 1
                    await asyncio.sleep(1.0)
                    continue
                outcomes[f"failed: {error.status()}"] += 1
                break
            outcomes["ok"] += 1
            break
        kinds[kind] += 1
        answered += 1
        if answered % EVERY == 0:
            readings.append(
                {"requests": answered, "seconds": round(time.monotonic() - started, 1),
                 "load_1m": round(os.getloadavg()[0], 2), "rss_mib": stub_memory(server_pid)}
            )  # fmt: skip
            print(f"stub-rss: {readings[-1]}", flush=True)

    await loops.each_index(one, total, IN_FLIGHT)
    await client.close()
    return {
        "requests": total,
        "seconds": round(time.monotonic() - started, 1),
        "outcomes": dict(outcomes),
        "kinds": dict(kinds),
        "readings": readings,
        "verdict": verdict(readings),
    }


def verdict(readings: list[dict], model: str = WATCHED) -> dict:
    """The watched stub's RSS at the checkpoints, its growth from request 1,000, and whether it is flat
    (within 5 %) or at a ceiling (the last quarter of the run added under 1 % of the RSS at 1,000)."""
    series = [(r["requests"], r["rss_mib"].get(model)) for r in readings if r["rss_mib"].get(model)]
    at = dict(series)
    base = at.get(CHECKPOINTS[0])
    if base is None or len(series) < 2:
        return {"model": model, "flat": False, "ceiling": False, "why": "not enough readings"}
    later = [rss for requests, rss in series if requests >= CHECKPOINTS[0]]
    last = series[-1][0]
    tail = [rss for requests, rss in series if requests >= 0.75 * last]
    growth = (max(later) - base) / base
    tail_growth = (max(tail) - min(tail)) / base
    return {
        "model": model,
        "checkpoints_mib": {str(point): at[point] for point in CHECKPOINTS if point in at},
        "last": {"requests": last, "rss_mib": series[-1][1]},
        "max_mib": max(later),
        "growth_from_1k": round(growth, 4),
        "growth_last_quarter": round(tail_growth, 4),
        "flat": growth <= FLAT_SHARE,
        "ceiling": tail_growth <= 0.01,
    }


def measure(grpc_url: str, server_pid: int, total: int, seed: int = 20261207) -> dict:
    """The reliability phase: the soak against a running server."""
    return asyncio.run(soak(grpc_url, server_pid, total, seed))


def report_lines(result: dict, environment: dict[str, str] | None = None) -> list[str]:
    """The markdown section of one soak."""
    judged = result["verdict"]
    models = sorted({model for reading in result["readings"] for model in reading["rss_mib"]})
    lines = [
        f"Mixed soak: {result['requests']} embedding requests ({result['kinds']}) in {result['seconds']} s, "
        f"{IN_FLIGHT} in flight: {result['outcomes']}."
        + (f" Environment: {environment}." if environment else ""),
        "",
        f"**{judged['model']}**: {judged.get('checkpoints_mib')} MiB at requests "
        f"{', '.join(judged.get('checkpoints_mib', {}))}; growth from 1k to the largest later reading "
        f"{100 * judged.get('growth_from_1k', float('nan')):.1f} %, within the last quarter "
        f"{100 * judged.get('growth_last_quarter', float('nan')):.1f} % -> "
        + (
            "**flat within 5 %**"
            if judged["flat"]
            else "at a ceiling"
            if judged["ceiling"]
            else "**growing**"
        ),
        "",
        "| requests | s | load | " + " | ".join(models) + " |",
        "|---|---|---|" + "---|" * len(models),
    ]
    for reading in result["readings"]:
        if reading["requests"] % 1000 == 0:
            cells = [str(reading["rss_mib"].get(model, "-")) for model in models]
            lines.append(
                f"| {reading['requests']} | {reading['seconds']} | {reading['load_1m']} | "
                + " | ".join(cells)
                + " |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    from perf.drills.reliability import Serve

    parser = command_parser("perf.drills.stub_rss", __doc__)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=20261207)
    parser.add_argument("--name", default="stub-rss", help="results file name (without extension)")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    experiment = Experiment("perf.drills.stub_rss", argv, args.out)
    environment = {
        name: value
        for name, value in os.environ.items()
        if name.startswith(("MALLOC_", "LD_PRELOAD", "ONEDNN_", "QWEN3VL_", "GLIBC_TUNABLES"))
    }
    serve = Serve(Path(f"/tmp/stub-rss-serve-{os.getpid()}.log"))
    try:
        startup = serve.wait_ready(900.0)
        print(f"ready in {startup} s; log {serve.log}", flush=True)
        result = measure(serve.grpc_url, serve.server_pid(), args.requests, args.seed)
    finally:
        if serve.process.poll() is None:
            serve.process.send_signal(signal.SIGTERM)
            try:
                serve.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                serve.process.kill()
    report = experiment.report(environment=environment, startup_seconds=startup, **result)
    experiment.write_json(f"{args.name}.json", report)
    lines = [*experiment.heading(f"Model stub RSS under a mixed soak ({args.name})", report)]
    lines += report_lines(result, environment)
    experiment.write_markdown(f"{args.name}.md", lines, echo=True)
    return 0 if result["verdict"].get("flat") or result["verdict"].get("ceiling") else 1


if __name__ == "__main__":
    sys.exit(main())
