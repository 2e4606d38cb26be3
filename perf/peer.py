"""The peer benchmark: sentence-transformers' `encode` against the served ensemble on the same machine, the
same items, interleaved (issue 22: what a user who embeds offline would pick instead of a server).

sentence-transformers 6 loads Qwen3-VL-Embedding natively but needs transformers 5 (and, for the model's
processor, torchvision built for the local torch); the project pins transformers 4.57.3. So it runs in a venv
of its own, `.venv-peer/` (`--peer-python`), that sees the project's venv for torch, numpy and Pillow
through a `.pth` and adds the rest (perf/README.md, "The peer benchmark"); the project's venv is never
changed.
Before measuring, the peer loads the checkpoint and encodes one text (`--probe`): when it cannot, this says
why (the missing package or class) and exits 2 without a result.

For each workload (`text_200`, `image_448`: rows with the default document instruction) and each repetition:
perf_analyzer against the server at `--concurrency` (HTTP, 3 windows of `--window-ms`), then the peer's
`encode` of the first `--items` rows of the same data file (batch `--batch-size`, after a warm-up batch;
its model load is not timed). The server's rate ÷ the peer's items/s per repetition gives the ratio, with its
median and min–max; the vectors of the same items from the server (the project's client) and from the peer
give the max abs difference.

    python -m perf.peer [--workloads text_200,image_448] [--concurrency 32] [--repetitions 3] [--model tiny]
    make perf-peer PERF_ARGS="--model bench"

Writes `peer-<model>.json` / `.md` into `perf/results/<host>/<date>/` with the run's provenance
(`perf.lib.record.Experiment`); logs under its `raw/peer-<model>/`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from perf.lib.console import add_out_argument, command_parser, log, parse_list, table
from perf.lib.paths import REPO
from perf.lib.perf_analyzer import Measurement, read_csv_row, run_perf_analyzer
from perf.lib.pipelines import ENSEMBLE, model_path
from perf.lib.record import Experiment
from perf.lib.sampling import ratio_spread
from perf.lib.servers import Endpoint, start_server
from perf.lib.workloads import decode_bytes_tensor, generate

PEER_PYTHON = REPO / ".venv-peer" / "bin" / "python"
PEER_WORKLOADS = ("text_200", "image_448")  # rows with the default instruction, the same for both sides
REQUIREMENT = (
    "sentence-transformers >= 6.2 with transformers 5 (5.17+), huggingface-hub, tokenizers 0.23, scipy, "
    "scikit-learn and a torchvision built for the local torch (CPU: the PyTorch CPU index) in .venv-peer/; "
    "see perf/README.md, 'The peer benchmark'"
)
PEER_TIMEOUT_S = 900.0


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("perf.peer", __doc__)
    parser.add_argument(
        "--workloads", default=",".join(PEER_WORKLOADS), help="comma list of text_200, image_448"
    )
    parser.add_argument(
        "--concurrency", type=int, default=32, help="perf_analyzer's concurrency (default 32)"
    )
    parser.add_argument("--repetitions", type=int, default=3, help="interleaved repetitions (default 3)")
    parser.add_argument(
        "--items", type=int, default=256, help="rows the peer encodes (default 256, at most the file's)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="the peer's encode batch (default 32)")
    parser.add_argument("--window-ms", type=int, default=5000, help="perf_analyzer's window; 3 per point")
    parser.add_argument(
        "--model", default="tiny", help="tiny, bench or a checkpoint directory (default tiny)"
    )
    parser.add_argument("--peer-python", type=Path, default=PEER_PYTHON, help="the peer venv's python")
    add_out_argument(parser)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.workloads = parse_list(args.workloads)
    unknown = [name for name in args.workloads if name not in PEER_WORKLOADS]
    if unknown or not args.workloads:
        parser.error(f"--workloads: choose from {', '.join(PEER_WORKLOADS)}")
    if min(args.concurrency, args.repetitions, args.items, args.batch_size) < 1:
        parser.error("--concurrency, --repetitions, --items and --batch-size must be ≥ 1")
    return args


def peer_env() -> dict[str, str]:
    # Offline (the checkpoint is local) and single-process tokenisation, as the server's stubs run.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def probe(python: Path, model: Path) -> tuple[bool, str]:
    """(True, versions JSON) when the peer loads the checkpoint and encodes a text, else (False, why)."""
    if not python.exists():
        return False, f"no peer venv: {python} does not exist"
    done = subprocess.run(
        [str(python), "-m", "perf.lib.peer_encode", "--model", str(model), "--probe"],
        cwd=REPO,
        env=peer_env(),
        capture_output=True,
        text=True,
        timeout=PEER_TIMEOUT_S,
    )
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return False, lines[-1] if lines else f"exited with {done.returncode}"
    return True, done.stdout.strip().splitlines()[-1]


def default_instruction() -> str:
    """The system turn the server puts before every row sent without an INSTRUCTION (backend.text.chat)."""
    from backend.settings import PreprocessSettings
    from backend.text import chat

    return chat.normalize_instruction(None, PreprocessSettings.default_instruction)


def workload_items(name: str, count: int, media: Path) -> list[dict[str, Any]]:
    """The first `count` rows of the workload's data file as {"text", "image": path or None, "instruction"}
    (images written once under `media`; `instruction`: the server's default system turn, which the peer
    puts in the same chat messages for a text-only row)."""
    rows = json.loads(generate(name).read_text())["data"][:count]
    items = []
    for index, row in enumerate(rows):
        text = row["TEXT"]["content"][0] if "TEXT" in row else None
        image = None
        if "IMAGE" in row:
            path = media / f"{name}-{index}.img"
            if not path.exists():
                path.write_bytes(decode_bytes_tensor(row["IMAGE"]))
            image = str(path)
        items.append({"text": text, "image": image, "instruction": default_instruction()})
    return items


def server_vectors(endpoint: Endpoint, items: Sequence[dict[str, Any]]) -> np.ndarray:
    """The server's vectors for the items, through the project's client (default instruction, full size)."""
    from qwen3vl_client import EmbeddingClient, Item

    asked = [
        Item(text=i["text"], images=[Path(i["image"]).read_bytes()] if i["image"] else ()) for i in items
    ]
    with EmbeddingClient(endpoint.http, model=ENSEMBLE) as client:
        return np.asarray(client.embed(asked), dtype=np.float32)


def server_rate(
    endpoint: Endpoint, name: str, args: argparse.Namespace, tag: str, raw: Path
) -> tuple[float, str]:
    measurement = Measurement(mode="auto", interval_ms=args.window_ms, stability=100, max_trials=3)
    csv_path = raw / f"{tag}.csv"
    _, error = run_perf_analyzer(
        endpoint, "http", generate(name), args.concurrency, measurement, csv_path, raw / f"{tag}.log"
    )
    return (0.0, error) if error else (round(float(read_csv_row(csv_path)[1]["Inferences/Second"]), 2), "")


def peer_rate(
    args: argparse.Namespace, model: Path, items_file: Path, out: Path, log_path: Path
) -> dict[str, Any]:
    command = [str(args.peer_python), "-m", "perf.lib.peer_encode", "--model", str(model)]
    command += ["--items", str(items_file), "--out", str(out), "--batch-size", str(args.batch_size)]
    with log_path.open("a") as handle:
        done = subprocess.run(
            command, cwd=REPO, env=peer_env(), stdout=handle, stderr=subprocess.STDOUT, timeout=PEER_TIMEOUT_S
        )
    if done.returncode != 0:
        return {"items_per_s": 0.0, "error": f"peer exited with {done.returncode} (log {log_path.name})"}
    report = json.loads((out / "peer.json").read_text())
    report["items_per_s"] = round(report["items"] / report["seconds"], 2)
    report["cpu_ms_per_item"] = round(1000.0 * report["cpu_seconds"] / report["items"], 2)
    return report


def markdown(experiment: Experiment, report: dict[str, Any]) -> list[str]:
    lines = experiment.heading(f"Peer: sentence-transformers vs the server ({report['model']})", report)
    if not report["peer_available"]:
        return lines + [f"**The peer did not run**: {report['reason']}", "", f"It needs {REQUIREMENT}."]
    lines += [
        f"Peer versions: {report['peer_versions']}. Server: perf_analyzer over HTTP at concurrency "
        f"{report['concurrency']}; peer: `encode` of {report['items']} rows, batch {report['batch_size']}; "
        f"{report['repetitions']} interleaved repetitions. Ratio = server ÷ peer per repetition.",
        "",
    ]
    rows = []
    for w in report["workloads"]:
        rows.append(
            (
                w["workload"],
                f"{statistics.median(w['peer']):.1f}" if w["peer"] else "—",
                f"{statistics.median(w['server']):.1f}" if w["server"] else "—",
                f"**{w['ratio_median']}**",
                f"{w['ratio_min']}–{w['ratio_max']}",
                w["peer_cpu_ms_per_item"],
                f"{w['max_abs_diff']:.2e}" if w["max_abs_diff"] is not None else "—",
            )
        )
    header = ("workload", "peer items/s", "server infer/s", "server/peer", "min–max")
    return lines + table((*header, "peer CPU ms/item", "max abs diff"), rows)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    experiment = Experiment("perf.peer", argv, args.out)
    label = args.model if args.model in ("tiny", "bench") else Path(args.model).name
    raw = experiment.out / "raw" / f"peer-{label}"
    (raw / "media").mkdir(parents=True, exist_ok=True)
    model = model_path(args.model)
    name = f"peer-{label}"
    ok, detail = probe(args.peer_python, model)
    if not ok:
        log(f"perf.peer: sentence-transformers cannot run here: {detail}\n  it needs {REQUIREMENT}")
        report = experiment.report(model=label, peer_available=False, reason=detail, requirement=REQUIREMENT)
        experiment.write_json(f"{name}.json", report)
        experiment.write_markdown(f"{name}.md", markdown(experiment, report), echo=True)
        return 2
    log(f"peer: {detail}")
    endpoint = start_server("server", model, raw / "server.log")
    results = []
    try:
        for workload in args.workloads:
            items = workload_items(workload, args.items, raw / "media")
            items_file = raw / f"{workload}-items.json"
            items_file.write_text(json.dumps(items))
            server_runs: list[float] = []
            peer_runs: list[dict[str, Any]] = []
            for rep in range(args.repetitions):
                rate, error = server_rate(endpoint, workload, args, f"{workload}-r{rep}", raw)
                server_runs.append(rate)
                peer = peer_rate(
                    args, model, items_file, raw / f"{workload}-r{rep}", raw / f"{workload}-peer.log"
                )
                peer_runs.append(peer)
                log(
                    f"  {workload} repetition {rep + 1}/{args.repetitions}: server {rate:.1f} infer/s"
                    f"{' (' + error + ')' if error else ''}, peer {peer['items_per_s']:.1f} items/s"
                    f"{' (' + peer['error'] + ')' if peer.get('error') else ''}"
                )
            peer_rates = [p["items_per_s"] for p in peer_runs]
            diff = None
            last = raw / f"{workload}-r{args.repetitions - 1}" / "vectors.npy"
            if last.exists():
                diff = float(np.max(np.abs(server_vectors(endpoint, items) - np.load(last))))
            cpu = [p["cpu_ms_per_item"] for p in peer_runs if "cpu_ms_per_item" in p]
            results.append(
                {
                    "workload": workload,
                    "server": server_runs,
                    "peer": peer_rates,
                    **ratio_spread(peer_rates, server_runs),
                    "peer_cpu_ms_per_item": statistics.median(cpu) if cpu else None,
                    "max_abs_diff": diff,
                }
            )
    finally:
        endpoint.stop()
    report = experiment.report(
        model=label,
        peer_available=True,
        peer_versions=detail,
        concurrency=args.concurrency,
        items=args.items,
        batch_size=args.batch_size,
        repetitions=args.repetitions,
        workloads=results,
    )
    experiment.write_json(f"{name}.json", report)
    experiment.write_markdown(f"{name}.md", markdown(experiment, report), echo=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
