"""What `make serve` starts beside itself (tritonserver, its stubs, the OpenAI/vLLM gateway) lives exactly as
long as the launcher: a gateway that cannot start fails the start with one line, one that dies later is
restarted, and a SIGKILLed launcher (a process manager's last resort) leaves no process and no port behind.

Runs the launcher's small test repository (tests/integration/launcher_repository): ready in seconds.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.gateway_process import get
from tools.ports import free_ports
from tools.process_group import proc_stat
from tools.watchdog import live_stubs

pytestmark = pytest.mark.server

REPOSITORY = REPO / "tests" / "integration" / "launcher_repository"
STARTUP_SECS = 120.0
# Stubs notice their server's death about a second later (Python backend's parent check).
GONE_SECS = 10.0


@dataclass
class Launched:
    process: subprocess.Popen
    log: Path
    ports: list[int]  # HTTP, gRPC, metrics, gateway

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[3]}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def launch(tmp_path: Path, env: dict[str, str] | None = None) -> Launched:
    http_port, grpc_port, metrics_port, gateway_port = ports = free_ports(4)
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tools.launcher",
                "serve",
                f"--model-repository={REPOSITORY}",
                f"--http-port={http_port}",
                f"--grpc-port={grpc_port}",
                f"--metrics-port={metrics_port}",
            ],
            cwd=REPO,
            env={**os.environ, "GATEWAY_PORT": str(gateway_port), **(env or {})},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    return Launched(process, log, ports)


def health(url: str) -> int | None:
    try:
        return get(f"{url}/health", timeout=2)[0]
    except OSError:  # not listening
        return None


def wait_healthy(launched: Launched, timeout: float = STARTUP_SECS) -> None:
    """Until the gateway answers 200 and the launcher has seen it listen (its "serving on" line): a gateway
    that dies before that failed the start."""
    deadline = time.monotonic() + timeout
    while health(launched.gateway_url) != 200 or "serving on" not in launched.text():
        assert launched.process.poll() is None and time.monotonic() < deadline, launched.text()
        time.sleep(0.2)


def children(pid: int) -> dict[int, str]:
    """pid -> command line of every process whose parent is ``pid``."""
    found = {}
    for pid_dir in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((pid_dir / "stat").read_text().rpartition(")")[2].split()[1])
            if ppid == pid:
                found[int(pid_dir.name)] = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
    return found


def gateway_pid(launched: Launched) -> int:
    pids = [pid for pid, command in children(launched.process.pid).items() if "-m gateway" in command]
    assert len(pids) == 1, children(launched.process.pid)
    return pids[0]


def alive(pid: int) -> bool:
    """Running and not a zombie (an orphan's zombie waits for PID 1 to reap it and holds nothing)."""
    stat = proc_stat(Path(f"/proc/{pid}"))
    return stat is not None and stat[0] != "Z"


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def kill_all(pids: Iterator[int] | list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    running = launch(tmp_path_factory.mktemp("children"))
    try:
        wait_healthy(running)
        yield running
    finally:
        leftovers = list(children(running.process.pid))
        if running.process.poll() is None:
            running.process.send_signal(signal.SIGTERM)
            try:
                running.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                running.process.kill()
        kill_all(leftovers)
        print(f"launcher log: {running.log}")


def test_a_gateway_killed_while_serving_is_restarted(launched):
    first = gateway_pid(launched)
    os.kill(first, signal.SIGKILL)
    killed = time.monotonic()
    deadline = killed + 60
    while health(launched.gateway_url) != 200 or gateway_pid(launched) == first:
        assert launched.process.poll() is None and time.monotonic() < deadline, launched.text()
        time.sleep(0.2)
    print(f"gateway /health 200 again {time.monotonic() - killed:.1f} s after its SIGKILL")
    text = launched.text()
    assert "the OpenAI/vLLM gateway died (killed by signal 9 (SIGKILL)): crash 1, restarting in 1 s" in text
    assert f"restarted the OpenAI/vLLM gateway (pid {gateway_pid(launched)})" in text


def test_nothing_outlives_a_sigkilled_launcher(launched):
    """tritonserver runs in a session of its own and the stubs are its children: all of them, and the
    gateway, die with the launcher; the ports are free for the next start and the stubs, noticing their
    server gone, remove its shared memory."""
    launcher = launched.process.pid
    own = children(launcher)
    servers = [pid for pid, command in own.items() if "tritonserver" in command.split(" ", 1)[0]]
    assert len(servers) == 1, own
    stubs = list(live_stubs(servers[0]))
    assert stubs, "the test repository's models run in Python stubs"
    processes = [*own, *stubs]
    assert gateway_pid(launched) in processes
    prefix = re.search(r"shm prefix (\S+),", launched.text())[1]

    def regions() -> list[Path]:
        return sorted(Path("/dev/shm").glob(f"{prefix}*"))

    assert regions()
    launched.process.kill()
    launched.process.wait()
    killed = time.monotonic()
    deadline = killed + GONE_SECS
    try:
        while (
            any(alive(pid) for pid in processes) or not all(port_free(p) for p in launched.ports) or regions()
        ):
            left = {pid: own.get(pid, "stub") for pid in processes if alive(pid)}
            busy = [port for port in launched.ports if not port_free(port)]
            assert time.monotonic() < deadline, (
                f"left running: {left}; ports still taken: {busy}; shared memory left: {regions()}"
            )
            time.sleep(0.1)
        print(
            f"{len(processes)} processes gone, ports free, no shared memory "
            f"{time.monotonic() - killed:.1f} s after the launcher's SIGKILL"
        )
    finally:
        kill_all(processes)


def test_a_held_gateway_port_fails_the_start_with_one_line_naming_the_holder(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        launched = launch(tmp_path, {"GATEWAY_PORT": str(port)})
        try:
            code = launched.process.wait(timeout=60)
        finally:
            if launched.process.poll() is None:
                launched.process.kill()
    text = launched.text()
    assert code == 2, text
    line = (
        f"launcher: error: gateway port (GATEWAY_PORT) 127.0.0.1:{port} is not free (Address already in use)"
    )
    assert f"{line}; held by pid {os.getpid()} (" in text, text
    assert "tritonserver" not in text, text  # refused before anything started


def test_a_gateway_that_dies_during_start_fails_the_start_with_one_line(tmp_path):
    """A setting only the gateway reads, refused by it: it exits before listening; the launcher stops
    tritonserver and exits 1 with one line instead of serving without its front door."""
    launched = launch(tmp_path, {"GATEWAY_COALESCE_CALLS": "-1"})
    try:
        code = launched.process.wait(timeout=STARTUP_SECS)
    finally:
        if launched.process.poll() is None:
            launched.process.kill()
    text = launched.text()
    assert code == 1, text
    assert (
        "launcher: the OpenAI/vLLM gateway did not start: it exited with code 1 before listening on " in text
    )
    assert "serving on" not in text, text
