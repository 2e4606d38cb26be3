"""Response cache on vs off on a workload with repeated items: ``python -m perf.experiments.cache_bench``.

A RAG indexer re-embeds the same chunks and a search front end sees the same queries again and again. The
workload: N requests of one text row each, drawn with Zipf-like popularity (weight 1/rank) from D distinct
texts of ~W words, sent by C client threads over HTTP. Two servers of the embedding pipeline alone, the same
repository, one started with ``--cache-config=local,size=...``, one without; each runs R rounds, every round
with texts of its own (so each round starts with a cold cache). Reported per round: requests/s, the
ensemble's cache hits and misses (Triton's statistics) and the model step's executions. Writes
``cache.md`` and ``cache.json`` into the results directory.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from backend.protocol import EMBEDDING_ENSEMBLE
from deploy.serve import prepare_repository
from perf.lib.console import add_out_argument, command_parser
from perf.lib.paths import REPO
from perf.lib.record import Experiment
from tools.triton_server import TritonServer

ENSEMBLE = EMBEDDING_ENSEMBLE


def workload(requests: int, distinct: int, words: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    vocabulary = [f"w{rng.randrange(100000)}" for _ in range(5000)]
    texts = [f"round {seed} doc {i}: " + " ".join(rng.choices(vocabulary, k=words)) for i in range(distinct)]
    weights = [1.0 / rank for rank in range(1, distinct + 1)]
    return rng.choices(texts, weights=weights, k=requests)


def counts(client) -> dict[str, int]:
    ensemble = client.get_inference_statistics(ENSEMBLE)["model_stats"][0]
    step = client.get_inference_statistics(f"{ENSEMBLE}_model")["model_stats"][0]
    return {
        "hits": int(ensemble["inference_stats"]["cache_hit"]["count"]),
        "misses": int(ensemble["inference_stats"]["cache_miss"]["count"]),
        "model_executions": int(step["execution_count"]),
        "model_rows": int(step["inference_count"]),
    }


def send_all(url: str, texts: list[str], concurrency: int) -> float:
    """Seconds to send every text as its own request from `concurrency` threads (one client each)."""
    import tritonclient.http as http

    position = iter(range(len(texts)))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        client = http.InferenceServerClient(url, network_timeout=120)
        try:
            while True:
                with lock:
                    index = next(position, None)
                if index is None:
                    return
                tensor = http.InferInput("TEXT", [1, 1], "BYTES")
                tensor.set_data_from_numpy(np.array([[texts[index].encode()]], dtype=object))
                client.infer(ENSEMBLE, [tensor])
        except BaseException as error:  # surfaced after join
            errors.append(error)
        finally:
            client.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - started


def measure(cache_bytes: int, args: argparse.Namespace, repository: Path, log_dir: Path) -> list[dict]:
    import tritonclient.http as http

    extra = [f"--cache-config=local,size={cache_bytes}"] if cache_bytes else []
    label = "cache" if cache_bytes else "nocache"
    rounds = []
    with TritonServer(repository, extra_args=extra, log_path=log_dir / f"server-{label}.log") as server:
        client = http.InferenceServerClient(server.http_url)
        send_all(server.http_url, [f"warm-up {i}" for i in range(args.concurrency * 2)], args.concurrency)
        for index in range(args.rounds):
            texts = workload(args.requests, args.distinct, args.words, seed=1000 + index)
            before = counts(client)
            seconds = send_all(server.http_url, texts, args.concurrency)
            time.sleep(0.5)  # Triton counts an execution after its responses went out
            after = counts(client)
            delta = {key: after[key] - before[key] for key in after}
            rounds.append(
                {
                    "round": index,
                    "seconds": seconds,
                    "requests_per_s": len(texts) / seconds,
                    "distinct_in_round": len(set(texts)),
                    **delta,
                    "hit_rate": delta["hits"] / len(texts),
                }
            )
            print(
                f"{label} round {index}: {rounds[-1]['requests_per_s']:.1f} req/s, hits {delta['hits']}",
                flush=True,
            )
        client.close()
    return rounds


def summarise(rounds: list[dict]) -> dict[str, float]:
    rates = [r["requests_per_s"] for r in rounds]
    return {
        "requests_per_s_median": statistics.median(rates),
        "requests_per_s_min": min(rates),
        "requests_per_s_max": max(rates),
        "hit_rate_median": statistics.median(r["hit_rate"] for r in rounds),
        "model_rows_per_round_median": statistics.median(r["model_rows"] for r in rounds),
    }


def report(result: dict, experiment: Experiment) -> str:
    on, off = result["summary"]["cache"], result["summary"]["nocache"]
    p = result["parameters"]
    lines = [
        *experiment.heading("Response cache on vs off (embedding ensemble, tiny model, CPU)", result),
        f"Workload per round: {p['requests']} one-row text requests drawn with popularity 1/rank from "
        f"{p['distinct']} distinct texts of {p['words']} words (each round its own texts, so every round "
        f"starts cold); {p['concurrency']} HTTP client threads; {p['rounds']} rounds per server. Cache: "
        f"`--cache-config=local,size={p['cache_bytes']}`; the other server has none.",
        "",
        "| server | req/s median (min–max) | hit rate | model-step rows per round |",
        "|---|---|---|---|",
    ]
    for name, summary in (("cache on", on), ("cache off", off)):
        lines.append(
            f"| {name} | {summary['requests_per_s_median']:.1f} ({summary['requests_per_s_min']:.1f}–"
            f"{summary['requests_per_s_max']:.1f}) | {summary['hit_rate_median']:.1%} | "
            f"{summary['model_rows_per_round_median']:.0f} |"
        )
    lines += [
        "",
        "Throughput ratio (median, on ÷ off): "
        f"{on['requests_per_s_median'] / off['requests_per_s_median']:.2f}×.",
        "",
        "Per round:",
        "",
        "| server | round | req/s | hits | misses | model-step rows | distinct texts sent |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("cache", "nocache"):
        for r in result["rounds"][name]:
            lines.append(
                f"| {name} | {r['round']} | {r['requests_per_s']:.1f} | {r['hits']} | {r['misses']} | "
                f"{r['model_rows']} | {r['distinct_in_round']} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("perf.experiments.cache_bench", __doc__)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--distinct", type=int, default=100)
    parser.add_argument("--words", type=int, default=150)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache-bytes", type=int, default=256 * 1024 * 1024)
    add_out_argument(parser, required=True)
    args = parser.parse_args(argv)
    experiment = Experiment("perf.experiments.cache_bench", argv, args.out)
    with tempfile.TemporaryDirectory() as scratch:
        repository = prepare_repository(REPO / "model_repository", Path(scratch) / "repo", ["embedding"])
        rounds = {
            "cache": measure(args.cache_bytes, args, repository, Path(scratch)),
            "nocache": measure(0, args, repository, Path(scratch)),
        }
    result = experiment.report(
        parameters={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        rounds=rounds,
        summary={name: summarise(r) for name, r in rounds.items()},
    )
    experiment.write_json("cache.json", result)
    (args.out / "cache.md").write_text(report(result, experiment))
    print(report(result, experiment))
    return 0


if __name__ == "__main__":
    sys.exit(main())
