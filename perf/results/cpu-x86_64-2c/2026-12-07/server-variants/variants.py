"""Scratch: server variants (env / repository), alternated, text_200 or image_448 at c=32; rate + CPU per request per process."""
import contextlib, sys, json, time, os
from pathlib import Path
sys.path.insert(0, "/work/main")
os.chdir("/work/main")
from perf.lib.servers import start_server
from perf.lib.perf_analyzer import run_perf_analyzer, Measurement, read_csv_row
from perf.lib.workloads import generate
from perf.lib.sampling import group_members, cpu_seconds_of
from perf.lib.paths import REPO
from perf.lib.server_stats import finished_requests

def per_process(pgid):
    out = {}
    for proc, fields in group_members(pgid):
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
        except OSError:
            continue
        key = "triton" if "tritonserver" in cmd else ("model" if "_model" in cmd else ("pre" if "preprocess" in cmd else cmd[:40]))
        out[key] = out.get(key, 0.0) + cpu_seconds_of(fields)
    return out

def main():
    spec = json.loads(sys.argv[1])  # {"variants": {name: {"env": {...}, "repo": path|null}}, "workload": ..., "conc": .., "alternations": ..}
    model = Path(spec.get("model", "models/qwen3-vl-embedding-tiny")).resolve()
    raw = Path(spec.get("raw", "/tmp/exp/raw")); raw.mkdir(parents=True, exist_ok=True)
    data = generate(spec.get("workload", "text_200"))
    conc = spec.get("conc", 32)
    results = {name: [] for name in spec["variants"]}
    for a in range(spec.get("alternations", 2)):
        names = list(spec["variants"])
        if a % 2: names.reverse()
        for name in names:
            v = spec["variants"][name]
            kwargs = {}
            if v.get("repo"): kwargs["repository"] = Path(v["repo"])
            ep = start_server(name, model, raw / f"server-{name}-{a}.log", env=v.get("env", {}), **kwargs)
            pgid = ep.server.pid
            try:
                warm = Measurement(mode="count", request_count=4 * conc, timeout_s=120.0)
                run_perf_analyzer(ep, "http", data, conc, warm, raw / "w.csv", raw / "w.log")
                m = Measurement(mode="auto", interval_ms=spec.get("window_ms", 5000), stability=100, max_trials=3, timeout_s=120.0)
                before = per_process(pgid); n0 = finished_requests(ep, 'qwen3_vl_embedding')
                t0 = time.monotonic()
                mode, err = run_perf_analyzer(ep, "http", data, conc, m, raw / f"{name}-{a}.csv", raw / f"{name}-{a}.log")
                after = per_process(pgid); n1 = finished_requests(ep, 'qwen3_vl_embedding')
                rate = float(read_csv_row(raw / f"{name}-{a}.csv")[1]["Inferences/Second"]) if not err else 0
                el = time.monotonic() - t0
                cpu = {k: round(after.get(k, 0) - before.get(k, 0), 2) for k in after}
                tot = sum(cpu.values())
                # approx requests: rate * elapsed (includes the windows only roughly)
                line = dict(variant=name, alt=a, rate=round(rate, 1), err=err, cpu_per_s=round(tot / el, 2), ms_per_req={k: round(1000*c/max(1,n1-n0), 2) for k, c in cpu.items()}, ms_total=round(1000*tot/max(1,n1-n0),2), load=os.getloadavg()[0])
                print(json.dumps(line), flush=True)
                results[name].append(rate)
            finally:
                ep.stop()
    print(json.dumps(results))

main()
