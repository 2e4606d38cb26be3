"""What a new tensor shape costs the model step's memory on the CPU (issue 19, item 8): oneDNN builds and
keeps a kernel per shape, torch's own kernels and MKL's GEMM do not.

    python -m perf.experiments.per_shape_kernels [--shapes 400] [--sliding] [--out DIR]
        # DIR/per-shape-kernels.{json,md}, with --sliding DIR/per-shape-kernels-sliding.{json,md}

Each case runs in a process of its own (torch's oneDNN switch is per process, and RSS is the process's),
with the model step's fixed mmap threshold (backend.media.memory.fix_mmap_threshold), so that what stays is
not free heap (``--sliding``: glibc's default, sliding threshold, as a deployment that sets its own gets).
`--shapes` seeded row counts from 16 to 3,000 (the patch counts of images of many sizes), one call each, and
the RSS kept after the last call over the RSS before the first, with the calls' time:

- the vision tower's GELU at the tiny model's width (256) and the 8B's MLP width (4,304), oneDNN on and off;
- the patch embedding (3 x 2 x 16 x 16 inputs, hidden 1,024) as Qwen3-VL's Conv3d (oneDNN) and as the Linear
  the model step uses (backend.runtime.platforms.LinearPatchEmbed).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from typing import Any

from perf.lib.console import add_out_argument, command_parser, log, table
from perf.lib.record import Experiment

CASES = (
    ("gelu", 256, True),
    ("gelu", 256, False),
    ("gelu", 4304, True),
    ("gelu", 4304, False),
    ("conv3d patch embedding", 1024, True),
    ("linear patch embedding", 1024, True),
)


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


def run_case(kind: str, width: int, onednn: bool, shapes: int, sliding: bool) -> dict[str, Any]:
    """One case in this process: RSS kept and seconds over `shapes` calls of new row counts."""
    from backend.media.memory import fix_mmap_threshold

    if not sliding:
        fix_mmap_threshold()  # as the model step does first: large blocks never stay in the heaps
    import torch

    from backend.runtime.platforms import LinearPatchEmbed

    torch.set_num_threads(2)
    torch.backends.mkldnn.enabled = onednn  # type: ignore[assignment]
    patch = 3 * 2 * 16 * 16
    conv = torch.nn.Conv3d(3, width, kernel_size=(2, 16, 16), stride=(2, 16, 16))
    linear = LinearPatchEmbed(conv)
    gelu = torch.nn.GELU()
    before, seconds = rss_mib(), 0.0
    with torch.inference_mode():
        for index in range(shapes):
            rows = random.Random(index).randint(16, 3000)
            if kind == "gelu":
                inputs = torch.randn(rows, width)
                started = time.perf_counter()
                gelu(inputs)
            else:
                inputs = torch.randn(rows, patch)
                started = time.perf_counter()
                if kind.startswith("conv3d"):
                    conv(inputs.view(-1, 3, 2, 16, 16))
                else:
                    linear(inputs)
            seconds += time.perf_counter() - started
    return {"rss_kept_mib": round(rss_mib() - before, 1), "seconds": round(seconds, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("perf.experiments.per_shape_kernels", __doc__)
    parser.add_argument("--shapes", type=int, default=400)
    parser.add_argument("--sliding", action="store_true", help="glibc's sliding mmap threshold")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # a child process's one case (JSON)
    add_out_argument(parser)
    args = parser.parse_args(argv)
    if args.case:  # a child: one case, its result on stdout
        kind, width, onednn = json.loads(args.case)
        print(json.dumps(run_case(kind, width, onednn, args.shapes, args.sliding)))
        return 0
    experiment = Experiment("perf.experiments.per_shape_kernels", argv, args.out)
    results = []
    for kind, width, onednn in CASES:
        child = [sys.executable, "-m", "perf.experiments.per_shape_kernels", "--shapes", str(args.shapes)]
        child += ["--sliding"] if args.sliding else []
        done = subprocess.run(
            [*child, "--case", json.dumps([kind, width, onednn])], capture_output=True, text=True, check=True
        )
        result = {"kind": kind, "width": width, "onednn": onednn, **json.loads(done.stdout.splitlines()[-1])}
        log(f"per-shape kernels: {result}")
        results.append(result)
    report = experiment.report(shapes=args.shapes, sliding=args.sliding, results=results)
    name = "per-shape-kernels-sliding" if args.sliding else "per-shape-kernels"
    experiment.write_json(f"{name}.json", report)
    threshold = "glibc's sliding" if args.sliding else "the model step's fixed"
    lines = experiment.heading("Memory kept per new tensor shape, oneDNN on and off", report)
    lines += [
        f"{args.shapes} calls, each with a new seeded row count from 16 to 3,000, one process per case, "
        f"2 torch threads, {threshold} mmap threshold; RSS kept = after the last call minus before the "
        "first.",
        "",
        *table(
            ["op", "width", "oneDNN", "RSS kept MiB", "seconds"],
            [
                [r["kind"], r["width"], "on" if r["onednn"] else "off", r["rss_kept_mib"], r["seconds"]]
                for r in results
            ],
        ),
    ]
    experiment.write_markdown(f"{name}.md", lines, echo=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
