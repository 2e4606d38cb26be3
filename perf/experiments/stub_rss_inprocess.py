"""The embedding model step's RSS over a mixed soak, in one process (issue 19, item 8): the experiment that
found the stepwise growth, at a fraction of a served soak's cost.

    python -m perf.experiments.stub_rss_inprocess [--requests 3000] [--variant sliding|fixed|trim] [--out DIR]

The model step (EmbeddingModel, tiny checkpoint, as its stub builds it) runs perf.drills.stub_rss's seeded
request pool, prepared once by the real preprocessor: each call batches 1 to 4 pool requests together (as
Triton's dynamic batcher does, so batch shapes keep changing), from two threads taking turns (the main
thread, as the stub's execute(), and another, as its worker). Variants: ``sliding`` = glibc's default
(sliding mmap threshold), ``fixed`` = backend.media.memory.fix_mmap_threshold() before loading (what the
stub does), ``trim`` = malloc_trim(0) after every call, ``trim-on-growth`` =
backend.media.memory.release_freed_memory() after every call (a trim once the RSS grew 16 MB). The
environment reaches glibc too (``MALLOC_ARENA_MAX=2 python -m ...``). RSS every 500 calls, CPU seconds of
the process per call; appends to perf/results/<host>/<date>/stub-rss-inprocess.jsonl.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import random
import resource
import sys
import threading
import time

from perf.lib.console import add_out_argument, command_parser
from perf.lib.record import Experiment

EVERY = 500
INPUTS = ("TEXT", "IMAGE", "VIDEO", "INSTRUCTION", "DIMENSIONS", "RAW", "TOKEN_IDS")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def copied(tensors: dict) -> dict:
    """A request's arrays as the stub's worker holds them (backend.runtime.worker.owned: copies)."""
    return {name: None if array is None else array.copy() for name, array in tensors.items()}


def run(total: int, variant: str, seed: int, threshold: int) -> dict:
    from backend.embedding.model import EmbeddingModel
    from backend.embedding.preprocess import EmbeddingPreprocessor
    from backend.media import memory
    from backend.settings import ModelSettings, PreprocessSettings
    from perf.drills.stub_rss import request_pool

    preprocessor = EmbeddingPreprocessor(PreprocessSettings())
    pool = [
        preprocessor.pack(preprocessor.prepare_request({name: arrays.get(name) for name in INPUTS}))
        for _, arrays in request_pool(seed)
    ]
    if variant == "fixed":
        assert memory.fix_mmap_threshold(threshold), "the mmap threshold was not set"
    model = EmbeddingModel(ModelSettings(), 0, None, 1)
    model.warmup()
    gc.collect()
    gc.freeze()
    libc = ctypes.CDLL("libc.so.6")
    order = random.Random(seed + 1)
    schedule = [
        [order.randrange(len(pool)) for _ in range(order.choice((1, 1, 2, 3, 4)))] for _ in range(total)
    ]
    lock = threading.Lock()
    state = {"next": 0}
    readings: list[dict] = []
    started, cpu_started = time.monotonic(), cpu_seconds()

    def work() -> None:
        while True:
            with lock:  # one forward at a time, as the stub's two lanes share its cores
                index = state["next"]
                if index >= total:
                    return
                state["next"] += 1
                rows = [row for j in schedule[index] for row in model.unpack(copied(pool[j]))]
                model.respond(rows, model.embed(rows))
                if variant == "trim":
                    libc.malloc_trim(0)
                elif variant == "trim-on-growth":
                    memory.release_freed_memory()
                if (index + 1) % EVERY == 0:
                    readings.append(
                        {
                            "requests": index + 1,
                            "rss_mib": round(memory.resident_bytes() / 2**20, 1),
                            "seconds": round(time.monotonic() - started, 1),
                            "cpu_s": round(cpu_seconds() - cpu_started, 1),
                            "load_1m": round(os.getloadavg()[0], 2),
                        }
                    )
                    print(f"stub-rss-inprocess {variant}: {readings[-1]}", flush=True)

    other = threading.Thread(target=work)
    other.start()
    work()
    other.join()
    first, last = readings[0], readings[-1]
    return {
        "variant": variant,
        "threshold": threshold if variant == "fixed" else None,
        "requests": total,
        "environment": {k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "GLIBC_TUNABLES"))},
        "readings": readings,
        "growth_from_first_reading": round(
            (max(r["rss_mib"] for r in readings) - first["rss_mib"]) / first["rss_mib"], 4
        ),
        "cpu_ms_per_request": round(1000 * last["cpu_s"] / total, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("perf.experiments.stub_rss_inprocess", __doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument(
        "--variant", choices=("sliding", "fixed", "trim", "trim-on-growth"), default="sliding"
    )
    parser.add_argument("--seed", type=int, default=20261207)
    parser.add_argument("--threshold", type=int, default=256 * 1024, help="bytes, for --variant fixed")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    experiment = Experiment("perf.experiments.stub_rss_inprocess", argv, args.out)
    report = experiment.report(**run(args.requests, args.variant, args.seed, args.threshold))
    with (experiment.out / "stub-rss-inprocess.jsonl").open("a") as lines:
        lines.write(json.dumps(report) + "\n")
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
