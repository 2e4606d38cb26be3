"""Each CPU lever of issue 22 against the code it replaced, in one process, interleaved:
``python -m perf.experiments.cpu_levers [--model tiny] [--rounds 7] [--batch 16]``.

A lever changes one stage of the model step; this times that stage both ways on the same rows (the first
`--batch` rows of text_200 / image_448, prepared by the preprocess step's own code), alternately ABAB...,
`--rounds` times, in CPU seconds of this process (torch's threads included: `time.process_time`), and
reports CPU ms per request (one row each) with median and min–max, the ratio after ÷ before, and whether
the two give the same bits. Beside it the whole model step (`EmbeddingModel.embed`) per request, so the
lever's share is visible. CPU time, not wall time: other sessions share the cores.

Levers:
  eager_text_mask   the eager text forward with an all-ones attention mask (backend.runtime.compiled)
                    vs no mask, which makes transformers 4.57 build a vmap causal mask per forward
  pixel_table       the CPU pixel normalisation through a 256-entry table (backend.runtime.backbone
                    pixel_values) vs the arithmetic (normalize_pixels) in collate

Writes ``cpu-levers.md`` / ``.json`` into ``--out`` (default today's results directory).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from perf.lib.console import add_out_argument, command_parser, log, table  # noqa: E402
from perf.lib.inprocess import entry_inputs, load_entries  # noqa: E402
from perf.lib.pipelines import model_path  # noqa: E402
from perf.lib.record import Experiment, load_1m  # noqa: E402


def cpu_ms(work: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    started = time.process_time()
    for _ in range(repeats):
        result = work()
    return 1000.0 * (time.process_time() - started) / repeats, result


def interleaved(
    before: Callable[[], Any], after: Callable[[], Any], rounds: int, repeats: int, per: int
) -> dict[str, Any]:
    """CPU ms per request of each side over `rounds` alternations (order flipped each round)."""
    before(), after()  # warm
    times: dict[str, list[float]] = {"before": [], "after": []}
    loads = []
    results: dict[str, Any] = {}
    for index in range(rounds):
        order = (("before", before), ("after", after))
        for name, work in order if index % 2 == 0 else order[::-1]:
            ms, results[name] = cpu_ms(work, repeats)
            times[name].append(ms / per)
        loads.append(load_1m())
    ratios = [a / b for a, b in zip(times["after"], times["before"])]
    return {
        "before_ms": [round(value, 3) for value in times["before"]],
        "after_ms": [round(value, 3) for value in times["after"]],
        "before_median": round(statistics.median(times["before"]), 3),
        "after_median": round(statistics.median(times["after"]), 3),
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3),
        "load1": loads,
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("perf.experiments.cpu_levers", __doc__)
    add_out_argument(parser)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16, help="rows per micro-batch (one row per request)")
    args: argparse.Namespace = parser.parse_args(argv)
    experiment = Experiment("perf.experiments.cpu_levers", argv, args.out)

    import numpy as np
    import torch

    from backend.embedding.model import EmbeddingModel
    from backend.embedding.preprocess import EmbeddingPreprocessor
    from backend.runtime.backbone import collate, normalize_pixels, pixel_values
    from backend.settings import ModelSettings, PreprocessSettings

    path = str(model_path(args.model))
    preprocessor = EmbeddingPreprocessor(PreprocessSettings(model_path=path))
    model = EmbeddingModel(ModelSettings(model_path=path, device="cpu", dtype="float32", compile="off"))
    rows = {
        workload: [
            row
            for entry in load_entries(workload, args.batch)
            for row in preprocessor.prepare_request(entry_inputs(entry))
        ][: args.batch]
        for workload in ("text_200", "image_448")
    }
    levers: dict[str, Any] = {}

    text = collate(rows["text_200"], model.pad_token_id, model.device, model.dtype)
    forward = model.text_forward
    last = text.lengths - 1

    def unmasked() -> torch.Tensor:
        with torch.inference_mode():
            return forward.pooled(text.input_ids, last)

    def all_ones() -> torch.Tensor:
        with torch.inference_mode():
            return forward.pooled(text.input_ids, last, torch.ones_like(text.input_ids))

    log("eager_text_mask ...")
    levers["eager_text_mask"] = interleaved(unmasked, all_ones, args.rounds, 3, len(rows["text_200"]))

    visuals = [visual for row in rows["image_448"] for visual in row.images]
    patches = np.concatenate([visual.patches for visual in visuals])

    def arithmetic() -> torch.Tensor:
        return normalize_pixels(torch.from_numpy(patches).to(model.device)).to(model.dtype)

    def table_lookup() -> torch.Tensor:
        return pixel_values(patches, model.device, model.dtype)

    log("pixel_table ...")
    levers["pixel_table"] = interleaved(arithmetic, table_lookup, args.rounds, 5, len(rows["image_448"]))

    whole = {}
    for workload, batch in rows.items():
        log(f"model step, {workload} ...")
        ms, _ = cpu_ms(partial(model.embed, batch), 3)
        whole[workload] = round(ms / len(batch), 3)

    for lever in levers.values():
        results = lever.pop("results")
        lever["same_bits"] = bool(torch.equal(results["before"], results["after"]))
    report = experiment.report(model=args.model, batch=args.batch, levers=levers, model_step_cpu_ms=whole)
    experiment.write_json("cpu-levers.json", report)
    lines = experiment.heading("CPU levers, before and after, interleaved in one process", report)
    lines += table(
        ["lever", "stage", "before CPU ms/request", "after", "after ÷ before (min–max)", "same bits", "load"],
        [
            (
                name,
                stage,
                lever["before_median"],
                lever["after_median"],
                f"{lever['ratio_median']} ({lever['ratio_min']}–{lever['ratio_max']})",
                "yes" if lever["same_bits"] else "NO",
                f"{min(lever['load1'])}–{max(lever['load1'])}",
            )
            for (name, lever), stage in zip(
                levers.items(), ("text forward (text_200)", "collate: pixel normalisation (image_448)")
            )
        ],
    )
    lines += [
        "",
        f"The whole model step (`EmbeddingModel.embed`, batches of {args.batch}, this commit): "
        + ", ".join(f"{workload} {ms} CPU ms/request" for workload, ms in whole.items())
        + ".",
    ]
    path_md = experiment.write_markdown("cpu-levers.md", lines)
    log(f"wrote {path_md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
