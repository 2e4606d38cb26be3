import sys, os, subprocess, tempfile, time, json
sys.path.insert(0, "/work/main"); os.chdir("/work/main")
from pathlib import Path
from perf.lib.servers import start_server
from perf.lib.server_stats import cpu_seconds_by_role
from perf.experiments.index_capacity import write_items
scratch = Path(tempfile.mkdtemp(prefix="job3-"))
write_items(scratch / "items", 6000, 600)
ep = start_server("job", Path("models/qwen3-vl-embedding-tiny").resolve(), scratch / "server.log")
pid = ep.server.pid
def cmd(out, *extra):
    return [sys.executable, "-m", "qwen3vl_client", "index", str(scratch / "items"), "--out", str(scratch / out), "--json", "--no-progress", "--url", ep.grpc, "--protocol", "grpc", "--db-uri", "none", *extra]
variants = [a.split() for a in sys.argv[1:]]
try:
    for rep in range(int(os.environ.get('REPS','2'))):
        for k, extra in enumerate(variants if rep % 2 == 0 else variants[::-1]):
            c0 = sum(cpu_seconds_by_role(pid).values()); t = time.time()
            env = dict(os.environ); ex = [a for a in extra if "=" not in a]; env.update(a.split("=",1) for a in extra if "=" in a)
            r = subprocess.run(cmd(f"o{rep}-{k}-{len(extra)}", *ex), capture_output=True, text=True, env=env)
            el = time.time() - t; c1 = sum(cpu_seconds_by_role(pid).values())
            j = json.loads(r.stdout.strip().splitlines()[-1])
            print(" ".join(extra) or "default", "loop", j["items_per_second"], "server cores", round((c1 - c0) / j["seconds"], 2), r.stderr.count("unavailable"), flush=True)
finally:
    ep.stop()
