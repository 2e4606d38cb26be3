import sys, os, subprocess, tempfile, time, json, resource
sys.path.insert(0, "/work/main"); os.chdir("/work/main")
from pathlib import Path
from perf.lib.servers import start_server
from perf.experiments.index_capacity import write_items
scratch = Path(tempfile.mkdtemp(prefix="jobcpu-"))
write_items(scratch / "items", 6000, 600)
ep = start_server("job", Path("models/qwen3-vl-embedding-tiny").resolve(), scratch / "server.log")
def run(out):
    cmd = [sys.executable, "-m", "qwen3vl_client", "index", str(scratch / "items"), "--out", str(scratch / out), "--json", "--no-progress", "--url", ep.grpc, "--protocol", "grpc", "--db-uri", "none"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out_, _ = p.communicate()
    _, status, ru = os.wait4(p.pid, 0) if False else (None, None, None)
    return json.loads(out_.strip().splitlines()[-1])
try:
    for out in ("a", "a", "b", "b"):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        j = run(out)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        print(out, j["embedded"], j["seconds"], "cpu", round(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime, 2), flush=True)
finally:
    ep.stop()
