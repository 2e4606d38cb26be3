"""perf.lib.servers without a server: a perf tool stopped with SIGTERM still stops what it started."""

import signal
import subprocess
import sys
import time

from perf.lib.paths import REPO

STOPPED_BY_SIGTERM = """
import sys, time
from perf.lib.servers import exit_on_sigterm
exit_on_sigterm()
try:
    print("ready", flush=True)
    time.sleep(30)
finally:
    print("stopped its servers", flush=True)
"""


def test_sigterm_runs_the_finally_blocks_that_stop_the_servers():
    process = subprocess.Popen(
        [sys.executable, "-c", STOPPED_BY_SIGTERM], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=10)
    finally:
        process.kill()
    assert "stopped its servers" in out
    assert process.returncode == 128 + signal.SIGTERM
    assert time.monotonic() - started < 5
