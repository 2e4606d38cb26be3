"""Hostile KServe v2 bodies (what crashes or bloats tritonserver 2.51's HTTP front) sent to a published
port, with a small request alongside: each one's status, message and time, the small requests' worst
latency, and the receiving process's RSS after and at peak (VmHWM).

    python -m perf.drills.kserve_hostile --url http://127.0.0.1:9000 --pid PID

The small request is ``GET /v2/models/<model>/ready`` (forwarded to Triton over gRPC by the gateway).
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import time
import urllib.parse
import zlib
from collections.abc import Callable

from perf.drills.hostile_bodies import beside_trickle, peak_rss_mb

MODEL = "qwen3_vl_embedding"
INFER = f"/v2/models/{MODEL}/infer"
MIB = 1024 * 1024
# One hostile body: (path, body, extra headers).
Body = tuple[str, bytes, dict[str, str]]


def deep_json() -> Body:
    """120 KB of nested lists, as the whole body (tritonserver 2.51 answers it 500)."""
    return INFER, b"[" * 60_000 + b"]" * 60_000, {}


def deep_data() -> Body:
    """A tensor's data nested 60,000 lists deep (120 KB) inside a well-formed request: tritonserver 2.51
    walks tensor data recursively and segfaults on it."""
    nested = "[" * 60_000 + '"a"' + "]" * 60_000
    body = '{"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1, 1], "data": ' + nested + "}]}"
    return INFER, body.encode(), {}


def gzip_bomb() -> Body:
    """256 MiB of JSON whitespace in ~260 KB of gzip (2.51 inflates it whole: +2 GB peak, +257 MB kept)."""
    return INFER, gzip.compress(b"{" + b" " * (256 * MIB), compresslevel=9), {"Content-Encoding": "gzip"}


def deflate_bomb() -> Body:
    return INFER, zlib.compress(b"{" + b" " * (256 * MIB), 9), {"Content-Encoding": "deflate"}


def shape_mismatch() -> Body:
    """A binary tensor whose bytes do not fill its shape."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "DIMENSIONS",
                    "datatype": "INT32",
                    "shape": [4, 1],
                    "parameters": {"binary_data_size": 8},
                }
            ]
        }
    ).encode()
    return INFER, header + b"\x00" * 8, {"Inference-Header-Content-Length": str(len(header))}


def batch_wrap() -> Body:
    """A batch dimension of 2^40 (Triton keeps it modulo 2^32)."""
    body = {"inputs": [{"name": "DIMENSIONS", "datatype": "INT32", "shape": [2**40, 0], "data": []}]}
    return INFER, json.dumps(body).encode(), {}


def oversize() -> Body:
    """Over the gateway's 64 MiB body limit."""
    return INFER, b" " * (65 * MIB), {}


def many_numbers() -> Body:
    """60 MB of FP32 values in JSON: over the value cap, refused while it arrives."""
    count = 15_000_000
    data = b",".join([b"0.5"] * count)
    head = b'{"inputs": [{"name": "X", "datatype": "FP32", "shape": [%d], "data": [' % count
    return INFER, head + data + b"]}]}", {}


BODIES: dict[str, Callable[[], Body]] = {
    "deep JSON (120 KB, 60,000 levels)": deep_json,
    "deep tensor data (120 KB, 60,000 levels)": deep_data,
    "gzip bomb (256 MiB in 260 KB)": gzip_bomb,
    "deflate bomb (256 MiB)": deflate_bomb,
    "binary shape/byte mismatch": shape_mismatch,
    "batch dimension 2^40": batch_wrap,
    "65 MiB body": oversize,
    "15 M FP32 values in JSON": many_numbers,
}


def send(
    url: str, path: str, body: bytes | None, headers: dict[str, str], timeout: float = 120
) -> tuple[int, str, float]:
    """(status, error message, seconds) of one request on its own connection (GET when body is None)."""
    parts = urllib.parse.urlsplit(url)
    started = time.perf_counter()
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        connection.request("GET" if body is None else "POST", path, body, headers)
        response = connection.getresponse()
        raw, status = response.read(), response.status
    except (ConnectionError, http.client.HTTPException) as error:
        return 0, f"connection failed: {error}", time.perf_counter() - started
    finally:
        connection.close()
    try:
        answer = json.loads(raw) if raw else {}
    except ValueError:
        answer = {}
    message = answer.get("error", "") if isinstance(answer, dict) else ""
    return status, str(message), time.perf_counter() - started


def attack(url: str, body: Body, interval: float = 0.1) -> dict:
    """``body`` sent while ``GET /v2/models/<model>/ready`` is sent every ``interval`` s (beside_trickle)."""
    path, data, headers = body
    ready = f"/v2/models/{MODEL}/ready"

    def small() -> tuple[int, float]:
        status, _, seconds = send(url, ready, None, {})
        return status, seconds

    small()
    return beside_trickle(lambda: send(url, path, data, headers), small, interval)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--pid", type=int, required=True, help="the receiving process's id (for its RSS)")
    parser.add_argument("--repeat", type=int, default=1, help="send each body this many times")
    args = parser.parse_args()
    print(f"RSS at start: {peak_rss_mb(args.pid)[0]:.0f} MB")
    print("| body | size | status | answered in (worst) | small requests (worst) | RSS after / peak |")
    print("|---|---|---|---|---|---|")
    for name, build in BODIES.items():
        body = build()
        results = [attack(args.url, body) for _ in range(args.repeat)]
        worst = max(results, key=lambda result: result["seconds"])
        small_worst = max(result["small_worst"] or 0 for result in results)
        rss, peak = peak_rss_mb(args.pid)
        small_count = sum(result["small_count"] for result in results)
        print(
            f"| {name} | {len(body[1]) / 1e6:.2f} MB | {worst['status']} | {worst['seconds'] * 1000:.0f} ms "
            f"| {small_count} ({small_worst * 1000:.0f} ms) | {rss:.0f} / {peak:.0f} MB |"
        )
        print(f"  {worst['message']!r} small statuses {worst['small_statuses']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
