"""Startup time and memory of one served pipeline:
``python -m perf.experiments.startup_memory --model-path DIR --out D``.

Serves one pipeline of this repository (the image entrypoint's repository copy, deploy.serve) with the given
checkpoint on this machine and records: seconds until /v2/health/ready, the resident memory of each Python
backend stub (model step and preprocess instances, from /proc), the server's own, /dev/shm in use by the
server, and the embedding width. For the README's sizing guide (host memory and startup per instance).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from deploy.serve import PIPELINE_MODELS, prepare_repository
from perf.lib.console import add_out_argument, command_parser
from perf.lib.paths import REPO
from perf.lib.record import Experiment
from perf.lib.sampling import group_members, rss_kib
from tools.triton_server import TritonServer


def group_processes(pgid: int) -> list[tuple[int, str, int]]:
    """(pid, command line, resident bytes) of the processes in a process group."""
    found = []
    for proc, _ in group_members(pgid):
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            found.append((int(proc.name), cmdline, rss_kib(proc) * 1024))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("perf.experiments.startup_memory", __doc__)
    parser.add_argument("--model-path", type=Path, required=True)
    parser.add_argument("--pipeline", choices=sorted(PIPELINE_MODELS), default="embedding")
    parser.add_argument("--label", default="")
    add_out_argument(parser, required=True)
    args = parser.parse_args(argv)
    experiment = Experiment("perf.experiments.startup_memory", argv, args.out)
    env_name = "MODEL_PATH" if args.pipeline == "embedding" else "RERANKER_MODEL_PATH"
    os.environ[env_name] = str(args.model_path)
    with tempfile.TemporaryDirectory() as scratch:
        repository = prepare_repository(REPO / "model_repository", Path(scratch) / "repo", [args.pipeline])
        started = time.monotonic()
        with TritonServer(repository, log_path=Path(scratch) / "server.log", startup_timeout=1800) as server:
            ready_s = time.monotonic() - started
            assert server.pid is not None  # started
            processes = group_processes(server.pid)
            shm = sum(p.stat().st_size for p in Path("/dev/shm").glob(f"{server.shm_prefix}*"))
            width = None
            if args.pipeline == "embedding":
                import tritonclient.http as http

                client = http.InferenceServerClient(server.http_url, network_timeout=600)
                tensor = http.InferInput("TEXT", [1, 1], "BYTES")
                tensor.set_data_from_numpy(np.array([[b"How wide is this vector?"]], dtype=object))
                width = int(
                    client.infer(PIPELINE_MODELS["embedding"][0], [tensor]).as_numpy("EMBEDDING").shape[1]
                )
                client.close()
    stubs: dict[str, list[int]] = {}
    for _, cmdline, rss in processes:
        if "triton_python_backend_stub" in cmdline:
            model = next((m for m in PIPELINE_MODELS[args.pipeline][1:] if m in cmdline), "?")
            stubs.setdefault(model, []).append(rss)
        elif "tritonserver" in cmdline:
            stubs.setdefault("tritonserver", []).append(rss)
    result = experiment.report(
        model_path=str(args.model_path),
        pipeline=args.pipeline,
        seconds_to_ready=round(ready_s, 1),
        resident_bytes=stubs,
        dev_shm_bytes_at_ready=shm,
        embedding_width=width,
    )
    name = f"startup_memory-{args.label or args.model_path.name}"
    experiment.write_json(f"{name}.json", result)
    gib = 1024**3
    lines = [
        *experiment.heading(
            f"Startup and memory: {args.model_path.name} ({args.pipeline} pipeline, CPU)", result
        ),
        f"- ready after {result['seconds_to_ready']} s (server start, weights loaded, warm-up forward)",
        f"- embedding width: {width}",
        f"- /dev/shm in use at ready: {shm / 1024**2:.0f} MiB",
    ]
    for model, sizes in sorted(stubs.items()):
        lines.append(f"- resident memory, {model}: " + ", ".join(f"{size / gib:.2f} GiB" for size in sizes))
    experiment.write_markdown(f"{name}.md", lines, echo=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
