"""How long a short text waits while heavy videos are served (issue #10: heavy items must not block cheap).

Serves a copy of model_repository whose embedding preprocess step has N instances, measures one short text
request at a time alone, then beside 3 clients that keep sending a 20 s 640x480 video, for 40 s.

Between texts the client pauses a random 0-0.4 s (seeded): with a fixed pause the texts phase-lock with the
model step's forwards (each text is answered just after a forward ends, so the next one arrives early in
the next forward and waits for nearly all of it), which measures the worst case every time rather than a
text arriving at a random moment.

    python -m perf.experiments.mixed_latency 2 4 [--out DIR]   # DIR/mixed_latency.json
"""

import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.http as http

from backend.protocol import EMBEDDING_ENSEMBLE
from perf.lib.console import add_out_argument, command_parser
from perf.lib.record import Experiment
from perf.lib.variants import variant_repository, with_instance_count
from tools import synthetic
from tools.triton_server import TritonServer


def q(seconds: list[float], percentile: float) -> float:
    return round(float(np.percentile(seconds, percentile)) * 1000, 1)


def run(count: int) -> dict:
    repo = variant_repository(
        Path(tempfile.mkdtemp()) / "model_repository",
        {f"{EMBEDDING_ENSEMBLE}_preprocess": with_instance_count(count)},
    )
    video = synthetic.video(seconds=20, fps=24, width=640, height=480, seed=3)

    def inputs(name, value):
        t = http.InferInput(name, [1, 1], "BYTES")
        t.set_data_from_numpy(np.array([[value]], dtype=object))
        return [t]

    with TritonServer(repo, log_path=repo.parent / "server.log") as server:
        stop = threading.Event()
        heavy_done = []

        def heavy():
            c = http.InferenceServerClient(server.http_url, network_timeout=300)
            while not stop.is_set():
                s = time.perf_counter()
                c.infer(EMBEDDING_ENSEMBLE, inputs("VIDEO", video))
                heavy_done.append(time.perf_counter() - s)

        c = http.InferenceServerClient(server.http_url)
        for _ in range(5):
            c.infer(EMBEDDING_ENSEMBLE, inputs("TEXT", b"warm up"))
        alone = []
        for _ in range(20):
            s = time.perf_counter()
            c.infer(EMBEDDING_ENSEMBLE, inputs("TEXT", b"a short text to embed"))
            alone.append(time.perf_counter() - s)
        threads = [threading.Thread(target=heavy) for _ in range(3)]
        heavy_started = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(2)
        loaded = []
        pauses = np.random.default_rng(7)
        end = time.monotonic() + 40
        while time.monotonic() < end:
            s = time.perf_counter()
            c.infer(EMBEDDING_ENSEMBLE, inputs("TEXT", b"a short text to embed"))
            loaded.append(time.perf_counter() - s)
            time.sleep(pauses.uniform(0.0, 0.4))
        stop.set()
        for t in threads:
            t.join()
        heavy_seconds = time.perf_counter() - heavy_started
    return {
        "preprocess_instances": count,
        "text_alone_ms": {"p50": q(alone, 50), "p99": q(alone, 99)},
        "text_beside_3_video_streams_ms": {
            "p50": q(loaded, 50),
            "p90": q(loaded, 90),
            "p99": q(loaded, 99),
            "max": q(loaded, 100),
            "n": len(loaded),
        },
        "video_s": {"p50": round(float(np.median(heavy_done)), 2), "n": len(heavy_done)},
        "videos_per_s": round(len(heavy_done) / heavy_seconds, 2),
        "load_average_1m_after": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("perf.experiments.mixed_latency", __doc__)
    parser.add_argument("instances", type=int, nargs="+", help="preprocess instances, one run each")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    experiment = Experiment("perf.experiments.mixed_latency", argv, args.out)
    report = experiment.report(runs=[run(count) for count in args.instances])
    print(f"wrote {experiment.write_json('mixed_latency.json', report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
