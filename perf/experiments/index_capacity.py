"""The bulk job's throughput against the server's capacity for the same items (issue 20, item 1: "the job
reaches >= 0.9 of the server's measured capacity").

One tritonserver (model_repository as it is, no response cache: every request is computed), one fixed set of
items written both as a folder (`--texts` short .txt files, `--images` small JPEG photos) and as
perf_analyzer JSON input data (the same bytes; a text row's IMAGE and an image row's TEXT are empty, as the
client library sends a mixed batch). Each round, interleaved so that the other work on a shared machine
lands on every phase alike:

- `perf_analyzer, 1 item/request`: perf_analyzer over the items, `--concurrency` requests in flight (gRPC,
  time windows): the server forms its own batches; items/s = infer/s;
- `perf_analyzer, 32 items/request`: the same with `-b 32` (rows from successive data entries, the job's
  request shape), `--batched-concurrency` in flight; the higher of the two is the capacity reference;
- `client library`: EmbeddingClient (gRPC, the job's 32 items per request, `--client-concurrency`
  in flight) embedding the items `--client-passes` times, in this process: what the client library reaches.
- `qwen3vl index --db-uri none`: the job over the folder into a fresh --out (the shards only), in a process of
  its own; items/s over the whole command (start-up, hashing, Parquet included) and over the job's own
  embedding loop (its `--json` report's seconds).
- `qwen3vl index` (default Milvus Lite): the same, writing the database too.

Every phase records the 1-minute load average at its end and the server's CPU seconds (its process tree); the
ratios are taken within a round (the load of that minute cancels out).

    python -m perf.experiments.index_capacity [--rounds 2] [--texts 800] [--images 80] [--concurrency 64]
        [--index-args "--concurrency 8"] [--out DIR]     # DIR/index-capacity.{json,md}
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from backend.protocol import EMBEDDING_ENSEMBLE
from perf.lib.console import add_out_argument, code_block, command_parser, log, table
from perf.lib.perf_analyzer import Measurement, read_csv_row, run_perf_analyzer
from perf.lib.record import Experiment
from perf.lib.server_stats import cpu_seconds_by_role
from perf.lib.servers import Endpoint, as_served
from perf.lib.workloads import bytes_tensor, text_tensor
from qwen3vl_client import EmbeddingClient
from qwen3vl_client.items import Item
from tools import synthetic
from tools.triton_server import TritonServer

REPO = Path(__file__).resolve().parents[2]
PA_SINGLE, PA_BATCHED = "perf_analyzer, 1 item/request", "perf_analyzer, 32 items/request"
CLIENT, INDEX_NONE, INDEX_LITE = "client library", "index --db-uri none", "index (Milvus Lite)"
PHASES = (PA_SINGLE, PA_BATCHED, CLIENT, INDEX_NONE, INDEX_LITE)
BATCH = 32  # the job's (and the client library's) items per request
WORDS = "the a of report quarterly river garden engine protocol museum ticket winter orange signal".split()


def text_of(n: int) -> str:
    """A distinct short document, 20-40 words (~30-60 tokens)."""
    words = [WORDS[(n * 7 + k * 3) % len(WORDS)] for k in range(20 + n % 21)]
    return f"document {n}: " + " ".join(words)


def write_items(folder: Path, texts: int, images: int) -> list[dict[str, Any]]:
    """The items as files under `folder` and as perf_analyzer entries, in the job's (path) order."""
    entries = []
    (folder / "images").mkdir(parents=True)
    (folder / "texts").mkdir()
    for n in range(images):
        blob = synthetic.encode_image(synthetic.photo(128, 128, seed=n), "JPEG", quality=85)
        (folder / "images" / f"i{n:05d}.jpg").write_bytes(blob)
        entries.append({"TEXT": text_tensor(""), "IMAGE": bytes_tensor(blob)})
    for n in range(texts):
        text = text_of(n)
        (folder / "texts" / f"t{n:05d}.txt").write_text(text)
        entries.append({"TEXT": text_tensor(text), "IMAGE": bytes_tensor(b"")})
    return entries


class Phases:
    def __init__(self, server: TritonServer, args: Any, folder: Path, data: Path, scratch: Path) -> None:
        self.server, self.args, self.folder, self.data, self.scratch = server, args, folder, data, scratch
        self.items = args.texts + args.images
        self.endpoint = Endpoint("tiny", server.http_url, server.grpc_url, server.metrics_url)

    def server_cpu(self) -> float:
        return sum(cpu_seconds_by_role(self.server.pid).values()) if self.server.pid else 0.0

    def run(self, name: str, round_index: int) -> dict[str, Any]:
        cpu_before, load_before = self.server_cpu(), round(os.getloadavg()[0], 2)
        if name == PA_SINGLE:
            result = self.perf_analyzer(f"{round_index}-single", self.args.concurrency, 1)
        elif name == PA_BATCHED:
            result = self.perf_analyzer(f"{round_index}-batched", self.args.batched_concurrency, BATCH)
        elif name == CLIENT:
            result = self.client_library()
        else:
            result = self.index(round_index, database=name == INDEX_LITE)
        cpu = self.server_cpu() - cpu_before
        result.update(
            phase=name,
            server_cpu_s=round(cpu, 1),
            items_per_server_cpu_s=round(result["items"] / cpu, 2) if cpu > 0 else 0.0,
            load_1m_before=load_before,
            load_1m_after=round(os.getloadavg()[0], 2),
        )
        log(f"round {round_index}: {result}")
        return result

    def perf_analyzer(self, label: str, concurrency: int, batch: int) -> dict[str, Any]:
        csv_path = self.scratch / f"pa-{label}.csv"
        log_path = self.scratch / f"pa-{label}.log"
        mode, error = run_perf_analyzer(
            self.endpoint,
            "grpc",
            self.data,
            concurrency,
            Measurement(interval_ms=self.args.window_ms, stability=25, max_trials=6, point_seconds=15),
            csv_path,
            log_path,
            ensemble=EMBEDDING_ENSEMBLE,
            extra_args=["-b", str(batch)] if batch > 1 else [],
        )
        if error:
            raise RuntimeError(f"perf_analyzer: {error} (log {log_path})")
        _, row = read_csv_row(csv_path)
        rate = float(row["Inferences/Second"])  # rows: requests x batch
        # perf_analyzer's warm-up and unsettled windows are not in its rate: items per server CPU second is
        # left out for these phases (`items` 0).
        return {"items": 0, "items_per_s": round(rate, 1), "mode": mode}

    def client_library(self) -> dict[str, Any]:
        texts = [text_of(n) for n in range(self.args.texts)]
        images = sorted((self.folder / "images").iterdir())
        items = [Item(images=(path.read_bytes(),)) for path in images] + [Item(text=text) for text in texts]
        start = time.perf_counter()
        done = 0
        with EmbeddingClient(
            self.server.grpc_url, "grpc", batch_size=BATCH, max_concurrency=self.args.client_concurrency
        ) as client:
            for _ in range(self.args.client_passes):
                done += len(client.embed(items))
        seconds = time.perf_counter() - start
        return {"items": done, "seconds": round(seconds, 2), "items_per_s": round(done / seconds, 1)}

    def index(self, round_index: int, database: bool) -> dict[str, Any]:
        out = self.scratch / f"index-{round_index}-{'milvus' if database else 'none'}"
        shutil.rmtree(out, ignore_errors=True)
        command = [
            sys.executable,
            "-m",
            "qwen3vl_client",
            "index",
            str(self.folder),
            "--out",
            str(out),
            "--json",
            "--no-progress",
            "--url",
            self.server.grpc_url,
            "--protocol",
            "grpc",
            *([] if database else ["--db-uri", "none"]),
            *shlex.split(self.args.index_args),
        ]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{shlex.join(command)} exited {done.returncode}: {done.stderr[-2000:]}")
        report = json.loads(done.stdout.strip().splitlines()[-1])
        embedded = int(report["embedded"])
        if embedded != self.items:
            raise RuntimeError(f"index embedded {embedded} of {self.items} items: {report}")
        return {
            "items": embedded,
            "seconds": round(seconds, 2),
            "items_per_s": round(embedded / seconds, 1),
            "job_seconds": report["seconds"],
            "job_items_per_s": report["items_per_second"],
        }


def ratios(rounds: list[list[dict[str, Any]]]) -> dict[str, list[float]]:
    """Within each round: each phase's rate over the capacity, the higher of the two perf_analyzer rates."""
    out: dict[str, list[float]] = {}
    for round_ in rounds:
        by = {entry["phase"]: entry for entry in round_}
        capacity = max(by[PA_SINGLE]["items_per_s"], by[PA_BATCHED]["items_per_s"])
        pairs = [
            ("perf_analyzer 1 item/request / capacity", by[PA_SINGLE]["items_per_s"]),
            ("perf_analyzer 32 items/request / capacity", by[PA_BATCHED]["items_per_s"]),
            ("client library / capacity", by[CLIENT]["items_per_s"]),
            ("index --db-uri none (whole command) / capacity", by[INDEX_NONE]["items_per_s"]),
            ("index --db-uri none (job loop) / capacity", by[INDEX_NONE]["job_items_per_s"]),
            ("index Milvus Lite (whole command) / capacity", by[INDEX_LITE]["items_per_s"]),
            ("index Milvus Lite (job loop) / capacity", by[INDEX_LITE]["job_items_per_s"]),
        ]
        for label, rate in pairs:
            out.setdefault(label, []).append(round(rate / capacity, 3))
    return out


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def markdown(experiment: Experiment, report: dict[str, Any]) -> list[str]:
    lines = experiment.heading("The bulk job against the server's capacity, same items", report)
    lines += [
        f"One tritonserver (tiny model, no response cache), {report['rounds']} interleaved rounds. Items: "
        f"{report['texts']} short texts (20-40 words) and {report['images']} 128x128 JPEG photos, the same "
        "bytes for every phase. Capacity reference: the higher, within the round, of two perf_analyzer runs "
        f"over the items (gRPC, time windows): one item per request at concurrency {report['concurrency']} "
        f"(the server forms the batches), and {BATCH} items per request (`-b {BATCH}`, rows from successive "
        f"data entries: the job's request shape) at concurrency {report['batched_concurrency']}. "
        "Client library: EmbeddingClient, 32 items "
        f"per request, {report['client_concurrency']} in flight, {report['client_passes']} passes. "
        f"`qwen3vl index` args beyond the defaults: `{report['index_args'] or '(none)'}`; "
        "whole command = items / wall time of the process (start-up, hashing, writes included); job loop = "
        "the job's own `--json` seconds (from the first chunk to the last commit).",
        "",
        "Ratios to the perf_analyzer capacity, within each round: median (min-max) and per round:",
        "",
    ]
    lines += table(
        ["ratio", "median (min-max)", "per round"],
        [[name, spread(values), values] for name, values in report["ratios"].items()],
    )
    lines += ["", "Every phase (items/s; load average before and after; server CPU seconds):", ""]
    rows = []
    for index, round_ in enumerate(report["per_round"]):
        for entry in round_:
            rows.append(
                [
                    index,
                    entry["phase"],
                    entry["items_per_s"],
                    entry.get("job_items_per_s", ""),
                    entry["server_cpu_s"],
                    entry["items_per_server_cpu_s"] or "",
                    f"{entry['load_1m_before']} / {entry['load_1m_after']}",
                ]
            )
    lines += table(
        ["round", "phase", "items/s", "job loop items/s", "server CPU s", "items / server CPU s", "load 1m"],
        rows,
    )
    lines += [""]
    lines += code_block("uptime per round", report["uptime"])
    lines += report.get("notes", [])
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("perf.experiments.index_capacity", __doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--texts", type=int, default=800)
    parser.add_argument("--images", type=int, default=80)
    parser.add_argument("--concurrency", type=int, default=64, help="perf_analyzer's requests in flight")
    parser.add_argument(
        "--batched-concurrency",
        type=int,
        default=4,
        help="the same, 32 items/request (8 is refused: 256 rows queued)",
    )
    parser.add_argument("--window-ms", type=int, default=4000, help="perf_analyzer's measurement window")
    parser.add_argument("--client-concurrency", type=int, default=8)
    parser.add_argument("--client-passes", type=int, default=2)
    parser.add_argument("--index-args", default="", help="more options for qwen3vl index, one string")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    experiment = Experiment("perf.experiments.index_capacity", argv, args.out)
    with tempfile.TemporaryDirectory(prefix="index-capacity-") as temporary:
        scratch = Path(temporary)
        folder = scratch / "items"
        entries = write_items(folder, args.texts, args.images)
        data = scratch / "items.json"
        data.write_text(json.dumps({"data": entries}))
        with TritonServer(as_served(REPO / "model_repository")) as server:
            phases = Phases(server, args, folder, data, scratch)
            with EmbeddingClient(server.grpc_url, "grpc") as warm:
                warm.embed(texts=[text_of(n) for n in range(64)])
            rounds, uptimes = [], []
            for round_index in range(args.rounds):
                order = PHASES if round_index % 2 == 0 else tuple(reversed(PHASES))
                entries_ = {name: phases.run(name, round_index) for name in order}
                rounds.append([entries_[name] for name in PHASES])
                uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
                uptimes.append(f"round {round_index}: {uptime}")
                log(uptimes[-1])
    report = experiment.report(
        rounds=args.rounds,
        texts=args.texts,
        images=args.images,
        concurrency=args.concurrency,
        batched_concurrency=args.batched_concurrency,
        client_concurrency=args.client_concurrency,
        client_passes=args.client_passes,
        index_args=args.index_args,
        ratios=ratios(rounds),
        per_round=rounds,
        uptime=uptimes,
    )
    experiment.write_json("index-capacity.json", report)
    print(f"wrote {experiment.write_markdown('index-capacity.md', markdown(experiment, report), echo=True)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
