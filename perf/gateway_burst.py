"""The gateway's admission under the seed's burst: N concurrent /v1/embeddings requests of ~200 tokens,
each on its own connection at t=0 (what `vllm bench serve --request-rate inf` sends), against one
tritonserver, once per in-flight policy. Records statuses, wall time, CPU seconds of the gateway and of
Triton, the final in-flight bound and Triton's queue refusals.

    python -m perf.gateway_burst [--requests 1000] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import sys
import time
import urllib.request
from pathlib import Path

from perf.host import busy_processes, git_commit, host_tag, todays_results_dir, write_json

# name -> gateway environment
POLICIES = {
    "rate-following (default)": {},
    "fixed 64": {"GATEWAY_IN_FLIGHT_SECONDS": "0", "GATEWAY_MAX_IN_FLIGHT": "64"},
    "fixed 256": {"GATEWAY_IN_FLIGHT_SECONDS": "0", "GATEWAY_MAX_IN_FLIGHT": "256"},
}
PROMPT = " ".join(f"word{index}" for index in range(100))  # ~200 tokens


def cpu_seconds(pids: set[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def group(pgid: int) -> set[int]:
    """The live processes of a process group (tritonserver and its backend stubs)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rpartition(")")[2].split()[2]) == pgid:
                found.add(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


async def burst(url: str, count: int) -> list[int]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=1800)
    ) as session:

        async def one(index: int) -> int:
            body = {"input": f"{index} {PROMPT}", "truncate_prompt_tokens": -1}
            async with session.post(f"{url}/v1/embeddings", json=body) as response:
                await response.read()
                return response.status

        return await asyncio.gather(*(one(index) for index in range(count)))


def metric(text: str, name: str) -> float | None:
    match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.gateway_burst", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    from tests.integration.gateway_process import GatewayProcess
    from tools.triton_server import TritonServer

    out = args.out or todays_results_dir()
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    with TritonServer(Path(__file__).resolve().parent.parent / "model_repository") as server:
        for name, environment in POLICIES.items():
            with GatewayProcess(server.grpc_url, **environment) as gateway:
                asyncio.run(burst(gateway.url, 16))  # warm: tokenizer, channel, first batches
                triton_pids = group(server.pid)
                before = cpu_seconds({gateway._process.pid}), cpu_seconds(triton_pids)
                started = time.monotonic()
                statuses = asyncio.run(burst(gateway.url, args.requests))
                wall = time.monotonic() - started
                after = cpu_seconds({gateway._process.pid}), cpu_seconds(triton_pids)
                metrics = urllib.request.urlopen(f"{gateway.url}/metrics").read().decode()
                run = {
                    "policy": name,
                    "environment": environment,
                    "statuses": {str(status): statuses.count(status) for status in sorted(set(statuses))},
                    "wall_seconds": round(wall, 2),
                    "requests_per_second": round(len(statuses) / wall, 1),
                    "gateway_cpu_seconds": round(after[0] - before[0], 2),
                    "triton_cpu_seconds": round(after[1] - before[1], 2),
                    "final_in_flight_limit": metric(metrics, "gateway_triton_in_flight_limit"),
                    "triton_queue_refusals": metric(metrics, "gateway_triton_queue_refusals_total"),
                    "load_average": os.getloadavg(),
                }
                print(run, flush=True)
                runs.append(run)
    result = {
        "command": "python -m perf.gateway_burst " + shlex.join(sys.argv[1:] if argv is None else argv),
        "commit": git_commit(),
        "host": host_tag(),
        "requests": args.requests,
        "busy_processes": busy_processes(),
        "runs": runs,
    }
    write_json(out / "gateway_burst.json", result)
    print(f"wrote {out / 'gateway_burst.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
