"""Preprocessing throughput on one CPU core per modality:
``python -m perf.experiments.preprocess_rate --out DIR``.

The preprocess step (one Python process per Triton instance) is single-threaded work: chat formatting and
tokenising, decoding and resizing images, decoding and sampling video frames, patchifying. How many
instances a GPU needs is its item rate divided by what one core prepares. This runs the step's own code
(``EmbeddingPreprocessor.prepare_request``) in-process, pinned to one core, on perf's workloads (the same
bytes perf_analyzer sends), and reports items/s and tokens/s per core. The tokenizer and the vision geometry
(patch 16, merge 2) are the real models' (tiny checkpoint), so token counts are those of 2B/8B.
Writes ``preprocess_rate.md`` and ``preprocess_rate.json``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from perf.lib.console import add_out_argument, command_parser
from perf.lib.paths import REPO
from perf.lib.record import Experiment

WORKLOADS = ("text_200", "image_448", "screenshot", "video")


def rate(preprocessor, requests: list, seconds: float, repeats: int) -> dict:
    """Items/s and tokens/s of prepare_request over `requests`, best and median of `repeats` passes."""
    rates, cpu_rates, tokens_per_item, patches_per_item = [], [], 0.0, 0.0
    preprocessor.prepare_request(requests[0])  # warm: lazy decoders, tokenizer caches
    for _ in range(repeats):
        items = tokens = patches = 0
        started, cpu_started = time.perf_counter(), time.process_time()
        while True:
            for request in requests:
                for row in preprocessor.prepare_request(request):
                    items += 1
                    tokens += row.length
                    patches += row.vision_patch_count
            if time.perf_counter() - started >= seconds:
                break
        rates.append(items / (time.perf_counter() - started))
        # CPU time: what a dedicated core would do; wall time counts the other work on a shared machine.
        cpu_rates.append(items / (time.process_time() - cpu_started))
        tokens_per_item, patches_per_item = tokens / items, patches / items
    return {
        "items_per_s_median": statistics.median(rates),
        "items_per_s_best": max(rates),
        "items_per_s_all": rates,
        "items_per_cpu_s_median": statistics.median(cpu_rates),
        "tokens_per_item": tokens_per_item,
        "vision_patches_per_item": patches_per_item,
    }


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("perf.experiments.preprocess_rate", __doc__)
    add_out_argument(parser, required=True)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of one pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--core", type=int, default=0, help="CPU to pin to")
    args = parser.parse_args(argv)
    experiment = Experiment("perf.experiments.preprocess_rate", argv, args.out)

    os.sched_setaffinity(0, {args.core})  # one core: the rate of one preprocess instance
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from backend.embedding.preprocess import EmbeddingPreprocessor
    from backend.settings import PreprocessSettings
    from perf.lib.inprocess import entry_inputs, load_entries

    model = REPO / "models" / "qwen3-vl-embedding-tiny"
    preprocessor = EmbeddingPreprocessor(PreprocessSettings(model_path=str(model)))
    results = {}
    for workload in WORKLOADS:
        entries = load_entries(
            workload, {"text_200": 200, "image_448": 16, "screenshot": 8, "video": 4}[workload]
        )
        results[workload] = rate(preprocessor, [entry_inputs(e) for e in entries], args.seconds, args.repeats)
        print(workload, f"{results[workload]['items_per_cpu_s_median']:.1f} items/CPU-s", flush=True)
    report = experiment.report(results=results)
    experiment.write_json("preprocess_rate.json", report)
    lines = [
        *experiment.heading("Preprocess throughput per CPU core", report),
        f"Pinned to CPU {args.core}; {args.repeats} passes of ≥{args.seconds:g} s. On a machine shared with "
        "other work the wall-time rate is what this process got of the core and the CPU-time rate what one "
        "dedicated core does.",
        "",
        "| workload | items per CPU-second (median) | items/s wall (median; best) | tokens per item | "
        "vision patches per item |",
        "|---|---|---|---|---|",
    ]
    for workload, r in results.items():
        lines.append(
            f"| {workload} | {r['items_per_cpu_s_median']:.1f} | "
            f"{r['items_per_s_median']:.1f}; {r['items_per_s_best']:.1f} | "
            f"{r['tokens_per_item']:.0f} | {r['vision_patches_per_item']:.0f} |"
        )
    experiment.write_markdown("preprocess_rate.md", lines, echo=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
