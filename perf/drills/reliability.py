"""Reliability benchmark of `make serve` (issue #10): malformed load, overload, killed processes, a long soak.

    python -m perf.drills.reliability [--malformed 5000] [--soak 20000] [--seed N] [--out DIR]
    make reliability

Runs ``python -m tools.launcher serve`` (what ``make serve`` runs: supervisor, stub watchdog) on
model_repository/ with the tiny checkpoints on free ports, then, against that one server:

1. malformed: ``--malformed`` seeded cases from perf.drills.malformed (both ensembles, the inner model steps,
   HTTP, gRPC, raw HTTP bodies) from 4 threads, while a 5th sends the good requests over and over; every
   answer is judged (perf.drills.malformed.judge) and every good answer compared with the one it got alone;
2. soak: ``--soak`` good requests (texts, pairs, small images) from 32 in flight over gRPC; RSS of each
   stub after the first 1,000 and at the end, throughput of the first and the last 1,000;
3. overload: perf.drills.overload's phases (unloaded, capacity at 64 in flight, 4x capacity open loop);
   refusal: perf.drills.refusal's legs (4x capacity, short and long texts, over gRPC and through the
   gateway: refusal and admitted latency, memory), into refusal.{json,md} (``--only refusal``: this alone);
4. kills: perf.drills.recovery's SIGKILL of each stub kind and of tritonserver under load, recovery times;
5. SIGTERM under load: stop time, stubs and /dev/shm regions left.

Then the phases of issue 19 (``PHASES``; each one entry), those that need servers of their own after that one
has stopped:

- stub RSS (perf.drills.stub_rss, on the first server, after the soak): ``--rss-soak`` mixed embedding
  requests (texts of every length, images of many sizes, videos); the model stub's RSS flat within 5 % from
  request 1,000 on, or at a ceiling it keeps;
- gateway bodies (perf.drills.gateway_bodies): 60 MB hostile bodies, each at a fresh gateway: answered within
  5 s, peak RSS under 1 GB, a small request answered within 1 s meanwhile;
- reload (perf.drills.reload, with the gateway): SIGKILL of each of ``RELOAD_TARGETS`` under load; failed
  calls per caller (client library over HTTP and gRPC, the gateway) and how soon each answers again.

Reports crashes (processes that died without being killed), 5xx, hangs (> 10 s), lost or changed good
requests, INTERNAL answers and error log lines, recovery times and memory, as
perf/results/<host>/<date>/reliability.{json,md}. About 15-20 minutes on a 2-core host.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np

from perf.drills import gateway_bodies, malformed, overload, refusal, reload, stub_rss
from perf.drills.recovery import SERVE_LINE, TARGETS, Load, kill_and_measure, kills_table, ready, wait_until
from perf.lib import loops
from perf.lib.console import add_out_argument, code_block, command_parser
from perf.lib.paths import REPO
from perf.lib.record import Experiment
from perf.lib.sampling import rss_mib
from tools.ports import free_ports
from tools.watchdog import live_stubs

MALFORMED_THREADS = 4
SOAK_IN_FLIGHT = 32
SOAK_WINDOW = 1000
# A good request refused with UNAVAILABLE (a full queue) is retried, as the client does; lost = never
# answered.
GOOD_RETRIES = 3
# Batched with other rows a vector may differ in the last bits from the same row alone (padding in the
# micro-batch); the fuzz test, sending one request at a time, holds 1e-6.
BATCHED_TOLERANCE = 1e-5
SERVER_ENV = ("MODEL_PATH", "RERANKER_MODEL_PATH", "DEVICE")
ERROR_LOG = re.compile(
    r"(preprocess failed|model input failed|forward failed|Traceback|Segmentation|core dumped)"
)


def memory(server_pid: int) -> dict[str, float]:
    """RSS (MiB) of tritonserver and of each stub, named `<model>#<pid>`."""
    stubs = {f"{model}#{pid}": rss_mib(pid) for pid, model in sorted(live_stubs(server_pid).items())}
    return {"tritonserver": rss_mib(server_pid), **stubs}


class Serve:
    """`python -m tools.launcher serve --no-gateway` on free ports, its output in a log file."""

    def __init__(self, log: Path) -> None:
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.http_url, self.grpc_url = f"127.0.0.1:{self.http_port}", f"127.0.0.1:{self.grpc_port}"
        self.log = log
        env = {k: v for k, v in os.environ.items() if k not in SERVER_ENV}
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tools.launcher", "serve", "--no-gateway",
                 "--model-repository", "model_repository", f"--http-port={self.http_port}",
                 f"--grpc-port={self.grpc_port}", f"--metrics-port={self.metrics_port}"],
                cwd=REPO, stdout=output, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip

    def server_pid(self) -> int:
        return int(SERVE_LINE.findall(self.log.read_text(errors="replace"))[-1][0])

    def shm_prefix(self) -> str:
        return SERVE_LINE.findall(self.log.read_text(errors="replace"))[-1][1]

    def wait_ready(self, timeout: float) -> float:
        started = time.monotonic()

        def up() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"the launcher exited with code {self.process.returncode}; see {self.log}")
            return (
                ready(self.base) == 200
                and SERVE_LINE.search(self.log.read_text(errors="replace")) is not None
            )

        if wait_until(up, timeout, 0.5) is None:
            raise RuntimeError(f"not ready after {timeout:.0f} s; see {self.log}")
        return round(time.monotonic() - started, 1)


# --- 1. malformed requests with good ones in between --------------------------------------------------------


def good_with_retries(
    transports: malformed.Transports, case: malformed.Case
) -> tuple[malformed.Outcome, int]:
    retries = 0
    while True:
        outcome = transports.send(case)
        if outcome.kind != malformed.ANSWERED_UNAVAILABLE or retries >= GOOD_RETRIES:
            return outcome, retries
        retries += 1
        time.sleep(1.0)


def malformed_phase(serve: Serve, seed: int, count: int, media: malformed.Media, alone: list) -> dict:
    goods = malformed.good_cases(media)
    cases = list(malformed.malformed_cases(seed, count, media, heavy_share=0.002))
    outcomes: list[malformed.Outcome | None] = [None] * len(cases)
    done = threading.Event()
    good_results: list[tuple[int, malformed.Outcome, int]] = []

    def worker(offset: int) -> None:
        transports = malformed.Transports(serve.http_url, serve.grpc_url)
        try:
            for index in range(offset, len(cases), MALFORMED_THREADS):
                outcomes[index] = transports.send(cases[index])
        finally:
            transports.close()

    def good_sender() -> None:
        transports = malformed.Transports(serve.http_url, serve.grpc_url)
        position = 0
        try:
            while not done.is_set():
                outcome, retries = good_with_retries(transports, goods[position % len(goods)])
                good_results.append((position % len(goods), outcome, retries))
                position += 1
        finally:
            transports.close()

    started = time.monotonic()
    memory_before = memory(serve.server_pid())
    threads = [threading.Thread(target=worker, args=(offset,)) for offset in range(MALFORMED_THREADS)]
    sender = threading.Thread(target=good_sender)
    for thread in (*threads, sender):
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    sender.join()
    seconds = time.monotonic() - started
    time.sleep(2.0)
    failures: Counter[str] = Counter()
    examples: dict[str, str] = {}
    by_kind: dict[str, Counter] = {}
    for case, outcome in zip(cases, outcomes):
        assert outcome is not None
        by_kind.setdefault(case.kind, Counter())[outcome.kind] += 1
        why = malformed.judge(case, outcome)
        if why is not None:
            key = f"{case.kind}: {why.split(':')[0]}"
            failures[key] += 1
            examples.setdefault(key, f"{case.model} over {case.transport}: {why[:300]}")
    good = summarize_good(goods, alone, good_results)
    latencies = np.array([outcome.seconds for outcome in outcomes if outcome is not None])
    return {
        "cases": len(cases),
        "seconds": round(seconds, 1),
        "cases_per_s": round(len(cases) / seconds, 1),
        "answers": dict(Counter(outcome.kind for outcome in outcomes if outcome is not None)),
        "answers_by_kind": {kind: dict(counts) for kind, counts in sorted(by_kind.items())},
        "http_5xx": sum(1 for o in outcomes if o is not None and o.status.isdigit() and int(o.status) >= 500),
        "internal": sum(1 for o in outcomes if o is not None and o.kind == malformed.ANSWERED_INTERNAL),
        "hangs": sum(1 for o in outcomes if o is not None and o.seconds > malformed.HANG_SECONDS),
        "late_by_kind": late_by_kind(cases, outcomes),
        "latency_s": {
            "p50": round(float(np.percentile(latencies, 50)), 3),
            "p99": round(float(np.percentile(latencies, 99)), 3),
            "max": round(float(latencies.max()), 3),
        },
        "slowest": sorted(
            ((round(o.seconds, 1), c.kind) for c, o in zip(cases, outcomes) if o is not None), reverse=True
        )[:8],
        "failures": dict(failures),
        "failure_examples": examples,
        "good": good,
        "memory_before_mib": memory_before,
        "memory_after_mib": memory(serve.server_pid()),
    }


def late_by_kind(cases, outcomes) -> dict[str, dict[str, int]]:
    """Answers later than the hang bound, by case kind (heavy cases run a full max_length forward)."""
    late: dict[str, Counter] = {}
    for case, outcome in zip(cases, outcomes):
        if outcome is not None and outcome.seconds > malformed.HANG_SECONDS:
            late.setdefault(case.kind, Counter())[malformed.HUNG] += 1
    return {kind: dict(counts) for kind, counts in late.items()}


def summarize_good(goods, alone, results) -> dict:
    lost, changed, largest = 0, 0, 0.0
    examples = []
    for position, outcome, _ in results:
        if outcome.kind != malformed.ANSWERED_OK:
            lost += 1
            examples.append(f"{goods[position].kind}: {outcome.kind} {outcome.message[:200]}")
            continue
        for name, array in alone[position].outputs.items():
            other = outcome.outputs.get(name)
            if other is None or other.shape != array.shape:
                changed += 1
                examples.append(f"{goods[position].kind}: {name} shape changed")
                break
            difference = float(np.abs(other.astype(np.float64) - array.astype(np.float64)).max(initial=0.0))
            largest = max(largest, difference)
            if difference > BATCHED_TOLERANCE:
                changed += 1
                examples.append(f"{goods[position].kind}: {name} differs by {difference:.3g}")
                break
    return {
        "sent": len(results),
        "retried_unavailable": sum(retries for _, _, retries in results),
        "lost": lost,
        "changed": changed,
        "max_abs_difference": largest,
        "examples": examples[:5],
    }


# --- 2. soak ------------------------------------------------------------------------------------------------


def soak_requests(media: malformed.Media) -> list[malformed.Case]:
    """A fixed mix of short requests: 88 texts, 10 rerank pairs, 2 small images (each sent alone first)."""
    cases = []
    for index in range(88):
        text = f"Soak sentence {index}: " + "the river runs past the old mill " * (1 + index % 3)
        cases.append(
            malformed.Case(
                "soak/text",
                malformed.EMBEDDING,
                "grpc",
                malformed.OK,
                [malformed.text_tensor("TEXT", [text])],
            )
        )
    for index in range(10):
        cases.append(
            malformed.Case(
                "soak/pair",
                malformed.RERANKER,
                "grpc",
                malformed.OK,
                [
                    malformed.text_tensor("QUERY_TEXT", [f"question {index}?"]),
                    malformed.text_tensor("DOCUMENT_TEXT", [f"an answer of {index} words " * (index + 1)]),
                ],
            )
        )
    for blob in (media.png, media.jpeg):
        cases.append(
            malformed.Case(
                "soak/image",
                malformed.EMBEDDING,
                "grpc",
                malformed.OK,
                [malformed.blobs_tensor("IMAGE", [[blob]])],
            )
        )
    return cases


async def soak_async(serve: Serve, cases, expected, total: int) -> dict:
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(serve.grpc_url)
    completions: list[float] = []
    outcomes: Counter[str] = Counter()
    changed, largest = 0, 0.0
    memory_at: dict[str, dict] = {}
    started = time.monotonic()

    async def one(index: int) -> None:
        nonlocal changed, largest
        case = cases[index % len(cases)]
        inputs = []
        for tensor in case.tensors:
            infer_input = grpcclient.InferInput(tensor.name, list(tensor.array.shape), tensor.datatype)
            infer_input.set_data_from_numpy(tensor.array)
            inputs.append(infer_input)
        output = "SCORE" if case.model == malformed.RERANKER else "EMBEDDING"
        for attempt in range(GOOD_RETRIES + 1):
            try:
                result = await client.infer(case.model, inputs, client_timeout=60)
            except InferenceServerException as error:
                if "UNAVAILABLE" in str(error.status()) and attempt < GOOD_RETRIES:
                    outcomes["retried-unavailable"] += 1
                    await asyncio.sleep(1.0)
                    continue
                outcomes[f"lost: {error.status()}"] += 1
                return
            break
        array = result.as_numpy(output)
        difference = float(np.abs(array.astype(np.float64) - expected[index % len(cases)]).max())
        largest = max(largest, difference)
        changed += difference > BATCHED_TOLERANCE
        outcomes["ok"] += 1
        completions.append(time.monotonic())
        if len(completions) == SOAK_WINDOW:
            memory_at["after_1k"] = memory(serve.server_pid())

    await loops.each_index(one, total, SOAK_IN_FLIGHT)
    await client.close()
    memory_at["at_end"] = memory(serve.server_pid())
    completions.sort()
    first = SOAK_WINDOW / (completions[SOAK_WINDOW - 1] - started)
    last = SOAK_WINDOW / (completions[-1] - completions[-SOAK_WINDOW - 1])
    return {
        "requests": total,
        "seconds": round(time.monotonic() - started, 1),
        "outcomes": dict(outcomes),
        "changed": changed,
        "max_abs_difference": largest,
        "throughput_first_1k_per_s": round(first, 1),
        "throughput_last_1k_per_s": round(last, 1),
        "memory_mib": memory_at,
    }


def soak_phase(serve: Serve, media: malformed.Media, total: int) -> dict:
    cases = soak_requests(media)
    transports = malformed.Transports(serve.http_url, serve.grpc_url)
    expected = []
    for case in cases:
        outcome = transports.send(case)
        name = "SCORE" if case.model == malformed.RERANKER else "EMBEDDING"
        expected.append(outcome.outputs[name].astype(np.float64))
    transports.close()
    return asyncio.run(soak_async(serve, cases, expected, total))


# --- 3. overload --------------------------------------------------------------------------------------------


def overload_phase(serve: Serve, seconds: float, multiple: float, concurrency: int) -> list[dict]:
    phases = overload.measure(serve.grpc_url, serve.server_pid(), 5.0, seconds, multiple, concurrency)
    return [asdict(phase) for phase in asyncio.run(phases)]


# --- 4./5. kills and stop -----------------------------------------------------------------------------------


def refusal_phase(serve: Serve, experiment: Experiment, seconds: float) -> list[dict]:
    """perf.drills.refusal's legs against the launcher's server; refusal.{json,md} written here."""
    refusal.raise_file_limit()
    log_dir = experiment.out / "raw" / "refusal"
    log_dir.mkdir(parents=True, exist_ok=True)
    legs = asyncio.run(
        refusal.measure(
            serve.grpc_url, serve.server_pid(), list(refusal.TEXTS), list(refusal.PATHS), log_dir,
            seconds=seconds,
        )
    )  # fmt: skip
    refusal.write_report(experiment, legs, served_by="python -m tools.launcher serve --no-gateway")
    return [asdict(leg) for leg in legs]


def kills_phase(serve: Serve) -> tuple[list[dict], dict]:
    results = []
    with Load(serve.base) as load:
        time.sleep(3.0)
        for target, ensemble in TARGETS:
            results.append(kill_and_measure(serve.base, serve.log, load, target, ensemble))
        server_pid, prefix = serve.server_pid(), serve.shm_prefix()
        stopping = time.monotonic()
        serve.process.send_signal(signal.SIGTERM)
        code = serve.process.wait(timeout=120)
        stop = {
            "stop_seconds": round(time.monotonic() - stopping, 2),
            "launcher_exit_code": code,
            "stubs_left": len(live_stubs(server_pid)),
            "shm_regions_left": len(list(Path("/dev/shm").glob(f"{prefix}*"))),
            "requests_failed_during_stop": load.failed_between(stopping, time.monotonic()),
        }
    return results, stop


def tail_errors(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if not line.startswith("I1")]
    return " | ".join(lines[-4:])


def log_findings(log: Path, kills: int) -> dict:
    lines = log.read_text(errors="replace").splitlines()
    died = [line for line in lines if "tritonserver died" in line]
    stubs_died = [line for line in lines if "a stub of model" in line and "died" in line]
    errors = [line for line in lines if ERROR_LOG.search(line)]
    return {
        "tritonserver_deaths": len(died),
        "stub_deaths": len(stubs_died),
        # The kills phase causes one tritonserver death and one stub death per stub kind.
        "unexplained_tritonserver_deaths": max(0, len(died) - 1) if kills else len(died),
        "unexplained_stub_deaths": max(0, len(stubs_died) - (kills - 1)) if kills else len(stubs_died),
        "error_log_lines": len(errors),
        "error_log_examples": errors[:8],
        "launcher_lines": [line for line in lines if "launcher:" in line],
    }


# --- issue 19's phases -------------------------------------------------------------------------------------

RELOAD_TARGETS = ("qwen3_vl_embedding_model", "qwen3_vl_embedding_preprocess", "tritonserver")


def rss_phase(serve: Serve, args) -> dict:
    return stub_rss.measure(serve.grpc_url, serve.server_pid(), args.rss_soak, args.seed)


def gateway_bodies_phase(args) -> list[dict]:
    return gateway_bodies.measure(args.body_mb)


def reload_phase(args) -> list[dict]:
    return [reload.measure(target, 3, 4, 60.0, True, 15.0) for target in RELOAD_TARGETS]


# (report key, what runs it): on the first server while it serves, or once it has stopped (servers of their
# own). One entry per phase.
PHASES_ON_SERVER = [
    ("stub_rss", rss_phase),
]
PHASES_OWN_SERVERS = [
    ("gateway_bodies", gateway_bodies_phase),
    ("reload", reload_phase),
]


def reload_lines(results: list[dict]) -> list[str]:
    lines = [
        "| killed | Triton ready again after | caller | requests | failed | first answer after ready | "
        "latency around the kill p50 / p99 / max |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for caller in result["callers"]:
            lines.append(
                f"| {result['killed']} | {result['triton_ready_again_after_kill_s']} s | "
                f"{caller.get('caller')} | {caller.get('requests')} | {caller.get('failed')} | "
                f"{caller.get('first_answer_after_triton_ready_s')} s | "
                + " / ".join(f"{value} s" for value in caller["latency_around_kill_s"].values())
                + " |"
            )
    return lines


def phase_sections(report: dict) -> list[str]:
    """The markdown of issue 19's phases that ran."""
    md: list[str] = []
    if "stub_rss" in report:
        md += ["", "## Model stub RSS under a mixed soak (perf.drills.stub_rss)", ""]
        md += stub_rss.report_lines(report["stub_rss"])
    if "gateway_bodies" in report:
        md += ["", "## Hostile bodies at the gateway (perf.drills.gateway_bodies)", ""]
        md += gateway_bodies.report_lines(report["gateway_bodies"])
    if "reload" in report:
        md += ["", "## SIGKILL under load with the gateway (perf.drills.reload)", ""]
        md += reload_lines(report["reload"])
    return md


# --- report -------------------------------------------------------------------------------------------------


def write_report(experiment: Experiment, report: dict) -> None:
    experiment.write_json("reliability.json", report)
    bad, soak, findings = report["malformed"], report["soak"], report["log"]
    phases, kills, stop = report["overload"], report["kills"], report["stop_under_load"]
    heavy_late = sum(
        counts.get(malformed.HUNG, 0)
        for kind, counts in bad.get("late_by_kind", {}).items()
        if kind.endswith("/heavy")
    )
    md = [
        *experiment.heading(
            f"Reliability of `make serve` ({report['cores']} cores), {report['started']}", report
        ),
        "Tiny checkpoints, both ensembles, "
        f"server started by the launcher (supervisor + stub watchdog) in {report['startup_seconds']} s"
        f" (failed starts before: {report['failed_starts'] or 'none'}). "
        "The host is shared; latencies include other work.",
        "",
        "## Summary",
        "",
        f"- Crashes: {findings['unexplained_tritonserver_deaths']} tritonserver and "
        f"{findings['unexplained_stub_deaths']} stub deaths besides the ones the kill phase caused "
        f"({findings['tritonserver_deaths']} / {findings['stub_deaths']} in all).",
        f"- Malformed: {bad['cases']} requests in {bad['seconds']} s; INTERNAL {bad['internal']}, HTTP 5xx "
        f"{bad['http_5xx']} (Triton's JSON-parser 500s included, see below), answers later than "
        f"{malformed.HANG_SECONDS:g} s: {bad['hangs']} ({heavy_late} of them heavy cases, a full max_length "
        f"forward), wrongly judged: {sum(bad['failures'].values())}.",
        f"- Good requests during the malformed phase: {bad['good']['sent']} sent, "
        f"{bad['good']['lost']} lost, "
        f"{bad['good']['changed']} changed (max |difference| {bad['good']['max_abs_difference']:.2g}), "
        f"{bad['good']['retried_unavailable']} UNAVAILABLE retried.",
        f"- Soak: {soak['requests']} requests in {soak['seconds']} s: {soak['outcomes']}; changed "
        f"{soak['changed']} (max |difference| {soak['max_abs_difference']:.2g}); throughput first / last "
        f"1k: {soak['throughput_first_1k_per_s']} / {soak['throughput_last_1k_per_s']} req/s.",
        "- Error lines in the server log (tracebacks, 'failed' from our steps): "
        f"{findings['error_log_lines']}.",
        f"- SIGTERM under load: stopped in {stop['stop_seconds']} s, exit code {stop['launcher_exit_code']}, "
        f"{stop['stubs_left']} stubs and {stop['shm_regions_left']} /dev/shm regions left.",
        "",
        "## Malformed requests",
        "",
        f"Answers: {bad['answers']}. Latency p50 / p99 / max: {bad['latency_s']['p50']} / "
        f"{bad['latency_s']['p99']} / {bad['latency_s']['max']} s. Slowest: {bad['slowest']}.",
        "",
        "| case kind | answers |",
        "|---|---|",
        *[f"| {kind} | {counts} |" for kind, counts in bad["answers_by_kind"].items()],
        "",
        "Wrongly judged (kind: reason -> count): "
        + (", ".join(f"{key} -> {count}" for key, count in bad["failures"].items()) or "none"),
        "",
        *[f"- {key}: {example}" for key, example in bad["failure_examples"].items()],
        "",
        "## Memory (RSS MiB)",
        "",
        "| process | before malformed | after malformed | soak after 1k | soak at the end |",
        "|---|---|---|---|---|",
    ]
    names = list(bad["memory_before_mib"])
    for name in names:
        cells = [
            bad["memory_before_mib"].get(name),
            bad["memory_after_mib"].get(name),
            soak["memory_mib"].get("after_1k", {}).get(name),
            soak["memory_mib"].get("at_end", {}).get(name),
        ]
        md.append(f"| {name} | " + " | ".join("-" if cell is None else str(cell) for cell in cells) + " |")
    md += [
        "",
        "## Overload (perf.drills.overload's phases, gRPC, ~200-token texts)",
        "",
        *overload.phase_table([overload.Phase(**phase) for phase in phases]),
    ]
    md += [
        "",
        "## SIGKILL under load (perf.drills.recovery's measurement)",
        "",
        *kills_table(kills),
        "",
        "## Triton's own HTTP-front 500s (documented, tritonserver 2.51)",
        "",
        "Bodies that Triton's JSON parser rejects before any model runs are answered 500, not 400: not JSON "
        'or truncated ("failed to parse the request JSON buffer"; triton-inference-server/server PR #8773, '
        "open, would answer 400), JSON without `inputs`, a negative `binary_data_size`, an "
        "`Inference-Header-Content-Length` that cuts the JSON short. The run counts them among HTTP 5xx and "
        "accepts them only with Triton's parser message.",
        "",
        *code_block("Launcher log", findings["launcher_lines"]),
        *phase_sections(report),
    ]
    experiment.write_markdown("reliability.md", md, echo=True)


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("perf.drills.reliability", __doc__)
    parser.add_argument("--malformed", type=int, default=5000, help="malformed requests")
    parser.add_argument("--soak", type=int, default=20000, help="good requests in the soak")
    parser.add_argument("--seed", type=int, default=20261130)
    parser.add_argument("--overload-seconds", type=float, default=15.0)
    parser.add_argument("--only", choices=["refusal"], help="run this phase alone (no reliability.md)")
    parser.add_argument("--rss-soak", type=int, default=20000, help="mixed requests of the stub RSS phase")
    parser.add_argument("--body-mb", type=float, default=60.0, help="size of the gateway-body phase's bodies")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    experiment = Experiment("perf.drills.reliability", argv, args.out)
    media = malformed.build_media()
    serve = Serve(Path(f"/tmp/reliability-serve-{os.getpid()}.log"))
    failed_starts = []
    report: dict = {}
    try:
        try:
            report["startup_seconds"] = serve.wait_ready(900.0)
        except RuntimeError as error:
            # A failed first start is reported, not retried by the launcher; one more try keeps a start
            # flake of a busy host (seen: boost::interprocess::lock_exception, SIGABRT) from costing the run.
            failed_starts.append(f"{error}: {tail_errors(serve.log)}")
            serve = Serve(Path(f"/tmp/reliability-serve-{os.getpid()}-2.log"))
            report["startup_seconds"] = serve.wait_ready(900.0)
        report["failed_starts"] = failed_starts
        print(f"ready in {report['startup_seconds']} s; log {serve.log}", flush=True)
        if args.only == "refusal":
            refusal_phase(serve, experiment, args.overload_seconds)
            return 0
        transports = malformed.Transports(serve.http_url, serve.grpc_url)
        alone = [transports.send(case) for case in malformed.good_cases(media)]
        transports.close()
        phase_started = time.monotonic()
        report["malformed"] = malformed_phase(serve, args.seed, args.malformed, media, alone)
        print(f"malformed: {json.dumps(report['malformed'], default=str)[:2000]}", flush=True)
        report["soak"] = soak_phase(serve, media, args.soak)
        print(f"soak: {json.dumps(report['soak'])}", flush=True)
        for key, on_server in PHASES_ON_SERVER:
            report[key] = on_server(serve, args)
        report["overload"] = overload_phase(serve, args.overload_seconds, 4.0, 64)
        report["refusal"] = refusal_phase(serve, experiment, args.overload_seconds)
        report["kills"], report["stop_under_load"] = kills_phase(serve)
        for key, own_servers in PHASES_OWN_SERVERS:
            report[key] = own_servers(args)
        report["seconds"] = round(time.monotonic() - phase_started, 1)
    finally:
        if serve.process.poll() is None:
            serve.process.send_signal(signal.SIGTERM)
            try:
                serve.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                serve.process.kill()
    report["log"] = log_findings(serve.log, len(report.get("kills", [])))
    write_report(experiment, report=experiment.report(**report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
