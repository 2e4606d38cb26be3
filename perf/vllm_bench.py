"""The seed's benchmark, unchanged: vLLM 0.33's `vllm bench serve` against the gateway.

`make perf-vllm` installs the bench into its own venv (perf/requirements-vllm-bench.txt, ~2.2 GB, never the
project's) and runs this module, which starts tritonserver + gateway on free ports (``perf.gateway_stack``;
or uses ``--base-url``) and runs, offline (HF_HUB_OFFLINE=1, the tiny checkpoint's tokenizer):

    vllm bench serve --backend openai-embeddings --dataset-name random --random-input 200 \\
        --endpoint /v1/embeddings
    vllm bench serve --backend vllm-rerank --dataset-name random-rerank --random-input 200 \\
        --endpoint /v1/rerank

with the seed's defaults (1,000 prompts, every request sent at t=0). Writes ``vllm-bench-<name>.json`` (vLLM's
own result file), ``vllm-bench-<name>.log`` (its output) and ``vllm-bench.md`` (the commands and numbers, next
to the seed's vLLM-Ascend 8B figures) into the run directory.

    python -m perf.vllm_bench [--vllm .venv-vllm-bench/bin/vllm] [--only embeddings,rerank] [--base-url URL]
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perf.gateway_stack import (
    EMBEDDING_NAME,
    RERANKER_NAME,
    TINY_EMBEDDING,
    TINY_RERANKER,
    GatewayStack,
    shown_path,
)
from perf.lib.console import add_priority_argument, command_parser, log, parse_list
from perf.lib.paths import REPO
from perf.lib.record import Experiment

DEFAULT_VLLM = REPO / ".venv-vllm-bench" / "bin" / "vllm"
BENCH_TIMEOUT_S = 600.0
# vLLM's bench waits this long for a first successful request before it starts (0 = no check).
READY_CHECK_S = 60


@dataclass(frozen=True)
class Bench:
    name: str
    model: str
    tokenizer: Path
    arguments: tuple[str, ...]
    seed: dict  # what the vLLM-Ascend tutorial reports for the 8B on its NPU, by result key


BENCHES = {
    "embeddings": Bench(
        "embeddings",
        EMBEDDING_NAME,
        TINY_EMBEDDING,
        ("--backend", "openai-embeddings", "--dataset-name", "random", "--random-input", "200"),
        {
            "completed": 1000,
            "failed": 0,
            "duration": 19.53,
            "total_input_tokens": 200000,
            "request_throughput": 51.20,
            "total_token_throughput": 10240.42,
            "mean_e2el_ms": 10360.53,
            "median_e2el_ms": 10354.37,
            "p99_e2el_ms": 19423.21,
        },
    ),
    "rerank": Bench(
        "rerank",
        RERANKER_NAME,
        TINY_RERANKER,
        ("--backend", "vllm-rerank", "--dataset-name", "random-rerank", "--random-input", "200"),
        {"request_throughput": 72.99},
    ),
}
ENDPOINTS = {"embeddings": "/v1/embeddings", "rerank": "/v1/rerank"}
# Keys of vLLM's result JSON shown in the summary, with their labels.
SHOWN = (
    ("completed", "successful requests"),
    ("failed", "failed requests"),
    ("duration", "duration (s)"),
    ("total_input_tokens", "total input tokens"),
    ("request_throughput", "request throughput (req/s)"),
    ("total_token_throughput", "total token throughput (tok/s)"),
    ("mean_e2el_ms", "mean E2EL (ms)"),
    ("median_e2el_ms", "median E2EL (ms)"),
    ("p99_e2el_ms", "p99 E2EL (ms)"),
)


def command(vllm: Path, bench: Bench, base_url: str, run_dir: Path, num_prompts: int) -> list[str]:
    return [
        shown_path(vllm.absolute()),
        "bench",
        "serve",
        "--model",
        bench.model,
        "--tokenizer",
        shown_path(bench.tokenizer),
        *bench.arguments,
        "--endpoint",
        ENDPOINTS[bench.name],
        "--base-url",
        base_url,
        "--num-prompts",
        str(num_prompts),
        "--ready-check-timeout-sec",
        str(READY_CHECK_S),
        "--save-result",
        "--result-dir",
        shown_path(run_dir),
        "--result-filename",
        f"vllm-bench-{bench.name}.json",
    ]


def run_bench(vllm: Path, bench: Bench, base_url: str, run_dir: Path, num_prompts: int) -> dict:
    argv = command(vllm, bench, base_url, run_dir, num_prompts)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    # The bench reads OPENAI_API_KEY for its Authorization header; the gateway here runs without a key.
    env.pop("OPENAI_API_KEY", None)
    log(f"$ HF_HUB_OFFLINE=1 {shlex.join(argv)}")
    started = time.monotonic()
    try:
        result = subprocess.run(
            argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=BENCH_TIMEOUT_S
        )
        output, code = result.stdout + result.stderr, result.returncode
    except subprocess.TimeoutExpired as expired:
        printed = "".join(
            part.decode(errors="replace") if isinstance(part, bytes) else part or ""
            for part in (expired.stdout, expired.stderr)
        )
        output, code = f"{printed}\ntimed out after {BENCH_TIMEOUT_S:.0f} s", -9
    (run_dir / f"vllm-bench-{bench.name}.log").write_text(f"$ HF_HUB_OFFLINE=1 {shlex.join(argv)}\n{output}")
    outcome: dict[str, Any] = {
        "name": bench.name,
        "command": "HF_HUB_OFFLINE=1 " + shlex.join(argv),
        "exit_code": code,
        "wall_s": round(time.monotonic() - started, 1),
        "seed": bench.seed,
        "result": {},
        "printed": _result_block(output),
    }
    result_path = run_dir / f"vllm-bench-{bench.name}.json"
    if code == 0 and result_path.exists():
        saved = json.loads(result_path.read_text())
        outcome["result"] = {key: saved.get(key) for key, _ in SHOWN}
        # vLLM prints failures but does not save them: every prompt it did not complete failed.
        outcome["result"]["failed"] = saved["num_prompts"] - saved["completed"]
    else:
        outcome["error"] = output.strip()[-2000:]
    return outcome


def _result_block(output: str) -> str:
    """vLLM's printed `Serving Benchmark Result` block, as the tutorial shows it."""
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if "Serving Benchmark Result" in line]
    if not starts:
        return ""
    block = lines[starts[-1] :]
    ends = [i for i, line in enumerate(block) if i and set(line.strip()) == {"="}]
    return "\n".join(block[: ends[0] + 1] if ends else block)


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.2f}" if isinstance(value, float) else f"{value:,}"


def write_summary(experiment: Experiment, report: dict) -> None:
    lines = [
        *experiment.heading("vLLM 0.33 `vllm bench serve` against the gateway", report),
        f"- Scheduling priority (autogroup nice of server, gateway and bench): {report['priority']}",
        f"- Served: {report['served']}",
        f"- vLLM: {report['vllm_version']} from perf/requirements-vllm-bench.txt in its own venv, offline",
        "- The tiny random-weight checkpoints on 2 shared CPU cores: this measures the serving path (HTTP, "
        "gateway, Triton, preprocessing), not the 8B model; the seed's column is the tutorial's NPU run.",
        "",
    ]
    for outcome in report["benches"]:
        lines += [f"## {outcome['name']}", "", f"`{outcome['command']}`", ""]
        if outcome["result"]:
            lines += ["| | this run | seed (vLLM-Ascend, 8B, NPU) |", "|---|---:|---:|"]
            for key, label in SHOWN:
                mine, seed = outcome["result"].get(key), outcome["seed"].get(key)
                lines.append(f"| {label} | {_number(mine)} | {_number(seed)} |")
            lines += ["", "```", outcome["printed"], "```", ""]
        else:
            lines += [
                f"Failed (exit {outcome['exit_code']}):",
                "",
                "```",
                outcome.get("error", ""),
                "```",
                "",
            ]
    experiment.write_markdown("vllm-bench.md", lines)


def vllm_version(vllm: Path) -> str:
    python = vllm.parent / "python"
    try:
        return subprocess.run(
            [str(python), "-c", "import importlib.metadata as m; print(m.version('vllm'))"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:

    parser = command_parser("perf.vllm_bench", __doc__)
    parser.add_argument("--vllm", type=Path, default=DEFAULT_VLLM, help="the bench venv's vllm entry point")
    parser.add_argument("--only", default=",".join(BENCHES), help="comma-separated: embeddings,rerank")
    parser.add_argument("--num-prompts", type=int, default=1000, help="the seed's (and vLLM's) default")
    parser.add_argument("--base-url", default=None, help="a running gateway; default: start one here")
    add_priority_argument(parser)
    parser.add_argument("--run-dir", type=Path, default=None, help="default perf/results/<host>/<date>")
    args = parser.parse_args(argv)
    if not args.vllm.exists():
        raise SystemExit(f"{args.vllm} not found: `make perf-vllm` installs it")
    experiment = Experiment("perf.vllm_bench", argv, args.run_dir.resolve() if args.run_dir else None)
    run_dir = experiment.out.resolve()
    benches = [BENCHES[name] for name in parse_list(args.only)]
    outcomes = []
    if args.base_url:
        served = args.base_url
        outcomes = [run_bench(args.vllm, b, args.base_url, run_dir, args.num_prompts) for b in benches]
    else:
        with GatewayStack(run_dir / "raw" / "vllm-bench") as stack:
            served = (
                f"tritonserver + gateway started here; embedding {stack.embedding_model.name}, "
                f"reranker {stack.reranker_model.name}"
            )
            if args.priority:
                for problem in stack.prioritize(args.priority):
                    log(f"priority not set for {problem}")
            outcomes = [run_bench(args.vllm, b, stack.base_url, run_dir, args.num_prompts) for b in benches]
    report = experiment.report(
        priority=args.priority,
        served=served,
        vllm_version=vllm_version(args.vllm),
        benches=outcomes,
    )
    write_summary(experiment, report)
    log(f"wrote {run_dir / 'vllm-bench.md'}")
    failed = [o["name"] for o in outcomes if o["exit_code"] or not o["result"] or o["result"]["failed"]]
    for outcome in outcomes:
        log(f"  {outcome['name']}: {outcome['result'] or outcome.get('error', '')[-300:]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
