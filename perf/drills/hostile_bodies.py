"""Hostile bodies against a running gateway, with a small request alongside: how long each takes, what it
is answered, the small request's worst latency meanwhile and the gateway's peak RSS (VmHWM).

    python -m perf.drills.hostile_bodies --url http://127.0.0.1:9000 --pid PID --mb 20

The gateway needs no Triton for these (each body is refused at the door, or by Triton being away); the
small request is ``GET /metrics``, answered by the gateway's event loop alone.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path


def token_ids(size: int) -> tuple[str, bytes]:
    """One list of (distinct-looking) token ids of about ``size`` bytes."""
    count = size // 7
    ids = ",".join(str(100_000 + index % 50_000) for index in range(count))
    return "/v1/embeddings", b'{"input_format": "vllm", "input": [' + ids.encode() + b"]}"


def percent_uri(size: int) -> tuple[str, bytes]:
    """One percent-encoded ``data:`` URI of about ``size`` bytes."""
    payload = "%41" * (size // 3)
    content = [{"type": "image_url", "image_url": {"url": "data:image/png," + payload}}]
    body = {"messages": [{"role": "user", "content": content}]}
    return "/v1/embeddings", json.dumps(body).encode()


def one_char_strings(size: int) -> tuple[str, bytes]:
    """Millions of one-character strings in one list."""
    return "/v1/embeddings", b'{"input": [' + b",".join([b'"a"'] * (size // 4)) + b"]}"


def long_text(size: int) -> tuple[str, bytes]:
    """One text of ``size`` characters."""
    return "/v1/embeddings", b'{"input": ["' + b"a" * size + b'"]}'


def token_ids_under_cap(size: int) -> tuple[str, bytes]:
    """1.95 M token ids in one item: under the default value cap, so parsed, then refused per item."""
    ids = ",".join(str(100_000 + index % 50_000) for index in range(1_950_000))
    return "/v1/embeddings", b'{"input_format": "vllm", "input": [' + ids.encode() + b"]}"


def token_lists_under_cap(size: int) -> tuple[str, bytes]:
    """1,950 items of 1,000 token ids: within every limit (the embedding itself then waits on Triton)."""
    item = "[" + ",".join(str(100_000 + index) for index in range(1_000)) + "]"
    items = ",".join([item] * 1_950)
    return "/v1/embeddings", ('{"input_format": "vllm", "input": [' + items + "]}").encode()


BODIES: dict[str, Callable[[int], tuple[str, bytes]]] = {
    "token ids": token_ids,
    "percent-encoded data: URI": percent_uri,
    "one-character strings": one_char_strings,
    "one long text": long_text,
    "1.95 M token ids in one item": token_ids_under_cap,
    "1,950 items of 1,000 token ids": token_lists_under_cap,
}


def post(url: str, path: str, body: bytes | None, timeout: float = 300) -> tuple[int, dict, float]:
    """(status, parsed body, seconds) of one POST (a GET when ``body`` is None) on its own connection."""
    parts = urllib.parse.urlsplit(url)
    started = time.perf_counter()
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        if body is None:
            connection.request("GET", path)
        else:
            connection.request("POST", path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        raw = response.read()
        status = response.status
    finally:
        connection.close()
    try:
        answer = json.loads(raw) if raw else {}
    except ValueError:
        answer = {}
    return status, answer, time.perf_counter() - started


def peak_rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def beside_trickle(
    big: Callable[[], tuple[int, str, float]], small: Callable[[], tuple[int, float]], interval: float = 0.1
) -> dict:
    """``big()`` (status, message, seconds) sent while ``small()`` (status, seconds) is sent every
    ``interval`` s, each waiting for the last: the big one's status, message and seconds, and the small
    ones' count, worst latency and statuses."""
    done = threading.Event()
    latencies: list[float] = []
    statuses: set[int] = set()

    def trickle() -> None:
        while not done.is_set():
            status, seconds = small()
            latencies.append(seconds)
            statuses.add(status)
            time.sleep(interval)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    time.sleep(0.3)
    status, message, seconds = big()
    time.sleep(0.3)
    done.set()
    thread.join()
    return {
        "status": status,
        "message": message[:160],
        "seconds": seconds,
        "small_count": len(latencies),
        "small_worst": max(latencies) if latencies else None,
        "small_statuses": sorted(statuses),
    }


def attack(url: str, path: str, body: bytes, interval: float = 0.1, small_path: str = "/metrics") -> dict:
    """``body`` sent while a small request is sent every ``interval`` s (beside_trickle). The small
    request: GET /metrics, or a POST of a one-word prompt to /tokenize."""
    small_body = b'{"prompt": "hello"}' if small_path == "/tokenize" else None

    def small() -> tuple[int, float]:
        status, _, seconds = post(url, small_path, small_body, timeout=120)
        return status, seconds

    def big() -> tuple[int, str, float]:
        status, answer, seconds = post(url, path, body)
        return status, (answer.get("error") or {}).get("message", ""), seconds

    small()  # warm (a first /tokenize loads the tokenizer)
    return beside_trickle(big, small, interval)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--pid", type=int, required=True, help="the gateway's process id (for its RSS)")
    parser.add_argument("--mb", type=float, default=20, help="body size in MB (default 20)")
    parser.add_argument("--only", choices=sorted(BODIES), action="append")
    args = parser.parse_args()
    size = int(args.mb * 1_000_000)
    print(f"gateway RSS at start: {peak_rss_mb(args.pid)[0]:.0f} MB")
    print("| body | size | status | answered in | small requests (worst) | RSS after / peak |")
    print("|---|---|---|---|---|---|")
    for name, build in BODIES.items():
        if args.only and name not in args.only:
            continue
        path, body = build(size)
        result = attack(args.url, path, body)
        rss, peak = peak_rss_mb(args.pid)
        print(
            f"| {name} | {len(body) / 1e6:.1f} MB | {result['status']} | {result['seconds']:.2f} s | "
            f"{result['small_count']} ({result['small_worst']:.2f} s) | {rss:.0f} / {peak:.0f} MB |"
        )
        print(f"  {result['message']!r} small statuses {result['small_statuses']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
