"""`python -m tools.launcher serve` (what `make serve` runs) against a real tritonserver.

The served repository is tests/integration/launcher_repository: a Python model that sleeps its input
in milliseconds (one request per execution, a queue of two) and an ensemble over it. It loads in about
a second, so killing stubs and servers and waiting for them to come back stays quick.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from backend.backpressure import channel_files
from backend.settings import SERVER_ENV_VARIABLES
from perf.drills.recovery import Readiness
from tests.conftest import REPO
from tools.ports import free_ports
from tools.triton_server import STOP_MARGIN_SECS
from tools.watchdog import OLD_STUB_GRACE_SECS, live_stubs

REPOSITORY = Path(__file__).resolve().parent / "launcher_repository"
EXIT_TIMEOUT = 8
SERVE_LINE = re.compile(r"tritonserver pid (?P<pid>\d+), shm prefix (?P<prefix>\S+),")


@dataclass
class Served:
    process: subprocess.Popen
    log: Path
    http_port: int
    grpc_port: int
    metrics_port: int
    hold_load: Path | None = None  # while this file exists, a load of the model "held" waits

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def server_pids(self) -> list[int]:
        return [int(m["pid"]) for m in SERVE_LINE.finditer(self.text())]

    def shm_prefix(self) -> str:
        return SERVE_LINE.search(self.text())["prefix"]


def http(method: str, url: str, body: dict | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""  # refused / reset: nobody is serving


def infer(base: str, model: str, milliseconds: int, timeout: float = 30.0) -> tuple[int, bytes]:
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "INT32", "data": [milliseconds]}]}
    return http("POST", f"{base}/v2/models/{model}/infer", body, timeout)


def ready(base: str) -> int:
    return http("GET", f"{base}/v2/health/ready", timeout=2.0)[0]


def wait_for(predicate, timeout: float, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def launch(tmp_path: Path, *args: str, env: dict[str, str | None] | None = None) -> subprocess.Popen:
    """The launcher in this environment changed by ``env`` (a None value unsets the variable)."""
    log = (tmp_path / "serve.log").open("wb")
    changed = {**os.environ, **(env or {})}
    return subprocess.Popen(
        # The gateway make serve starts beside tritonserver has tests of its own.
        [sys.executable, "-m", "tools.launcher", "serve", "--no-gateway", *args],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={name: value for name, value in changed.items() if value is not None},
    )


def kill_servers(served: Served) -> None:
    """Safety net for a failed test: its tritonservers run in process groups of their own, which killing the
    launcher alone would leave behind."""
    for pid in served.server_pids():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def stop_launcher(served: Served) -> None:
    """Teardown: SIGTERM the launcher (killed if it outlives its exit timeout), then the safety net."""
    process = served.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=EXIT_TIMEOUT + STOP_MARGIN_SECS + 10)
        except subprocess.TimeoutExpired:
            process.kill()
    kill_servers(served)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("serve")
    http_port, grpc_port, metrics_port = free_ports(3)
    hold_load = tmp_path / "hold-load"
    process = launch(
        tmp_path,
        f"--model-repository={REPOSITORY}",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        f"--exit-timeout-secs={EXIT_TIMEOUT}",
        "--liveness-timeout=4",
        env={"LAUNCHER_TEST_HOLD_LOAD": str(hold_load)},
    )
    running = Served(process, tmp_path / "serve.log", http_port, grpc_port, metrics_port, hold_load)
    try:
        assert wait_for(lambda: ready(running.base) == 200, 60.0), running.text()
        yield running
    finally:
        stop_launcher(running)
        print(f"launcher log: {running.log}")


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (from /proc/net/tcp)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_serve_binds_loopback_by_default(served):
    for port in (served.http_port, served.grpc_port, served.metrics_port):
        addresses = listening_addresses(port)
        # 127.0.0.1 in /proc's little-endian hex, as IPv4 or (gRPC) IPv4-mapped IPv6; never a wildcard.
        assert addresses and addresses <= {"0100007F", "0000000000000000FFFF00000100007F"}, addresses


def test_serving_the_network_keeps_tritons_http_on_loopback(tmp_path):
    """TRITON_HOST=0.0.0.0 (the images) opens gRPC and metrics; Triton's HTTP stays on loopback, where
    tritonserver 2.51's parser faces no client (issue 19): REST goes through the gateway."""
    http_port, grpc_port, metrics_port = free_ports(3)
    process = launch(
        tmp_path,
        f"--model-repository={REPOSITORY}",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        env={"TRITON_HOST": "0.0.0.0", "TRITON_HTTP_HOST": None},
    )
    running = Served(process, tmp_path / "serve.log", http_port, grpc_port, metrics_port)
    try:
        assert wait_for(lambda: ready(running.base) == 200, 60.0), running.text()
        assert listening_addresses(http_port) == {"0100007F"}
        for port in (grpc_port, metrics_port):
            assert listening_addresses(port) & {"00000000", "00000000000000000000000000000000"}, port
    finally:
        stop_launcher(running)


def test_full_queue_answers_503_at_once(served):
    """One request executes and two wait; the rest of a burst is refused in milliseconds."""
    results: list[tuple[int, float]] = []

    def one():
        started = time.monotonic()
        status, _ = infer(served.base, "echo", 1500)
        results.append((status, time.monotonic() - started))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)  # in order: the first three are admitted
    for thread in threads:
        thread.join()
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 200, 200, 503, 503, 503], results
    assert all(seconds < 1.0 for status, seconds in results if status == 503), results


def test_killed_stub_is_reloaded_and_readiness_says_so_meanwhile(served):
    pid = served.server_pids()[-1]
    (stub,) = [stub for stub, model in live_stubs(pid).items() if model == "echo"]
    assert infer(served.base, "pipeline", 1)[0] == 200
    killed = time.monotonic()
    os.kill(stub, signal.SIGKILL)
    # The watchdog notices within half a second and unloads the model: readiness turns false ...
    assert wait_for(lambda: ready(served.base) == 400, 10.0, interval=0.02), served.text()[-3000:]
    # ... until the reloaded model serves.
    serving = wait_for(
        lambda: ready(served.base) == 200 and infer(served.base, "pipeline", 1)[0] == 200, 60.0, interval=0.05
    )
    assert serving, served.text()[-3000:]
    recovery = time.monotonic() - killed
    assert "watchdog: model echo serves again" in served.text()
    new_stubs = [stub for stub, model in live_stubs(pid).items() if model == "echo"]
    assert len(new_stubs) == 1 and new_stubs != [stub]
    # The dead stub's shared-memory region goes with its old instance, which is cleaned up in the
    # background: soon there is one region per live stub.
    regions = lambda: list(Path("/dev/shm").glob(f"{served.shm_prefix()}*"))  # noqa: E731
    assert wait_for(lambda: len(regions()) == len(live_stubs(pid)), 10.0), regions()
    print(f"stub SIGKILL -> serving again in {recovery:.1f} s")


def stubs_of(pid: int, model: str) -> set[int]:
    return {stub for stub, name in live_stubs(pid).items() if name == model}


def test_one_of_two_instances_killed_is_reloaded_once_and_leaves_no_stub_behind(served):
    """twin has two instances; one stub is SIGKILLed while both execute a request (tritonserver's unload
    of such a model never finishes and keeps the sibling stub running). Exactly one reload follows, the
    stub count returns to two new stubs and stays there, and a later kill of another model's stub is
    repaired too."""
    pid = served.server_pids()[-1]
    base = served.base
    before = stubs_of(pid, "twin")
    assert len(before) == 2
    echo_repairs = served.text().count("watchdog: model echo serves again")
    in_flight = [threading.Thread(target=infer, args=(base, "twin", 2000)) for _ in range(2)]
    for thread in in_flight:
        thread.start()
    time.sleep(0.5)  # both instances are executing
    killed = time.monotonic()
    os.kill(min(before), signal.SIGKILL)
    assert wait_for(lambda: ready(base) == 400, 10.0, interval=0.02), served.text()
    assert wait_for(lambda: ready(base) == 200 and infer(base, "twin", 1)[0] == 200, 30.0), served.text()
    print(f"one of two twin stubs SIGKILLed -> serving again in {time.monotonic() - killed:.1f} s")
    # The old generation's surviving stub is killed at the latest OLD_STUB_GRACE_SECS after the reload.
    assert wait_for(lambda: len(stubs_of(pid, "twin")) == 2, OLD_STUB_GRACE_SECS + 5.0), served.text()
    after = stubs_of(pid, "twin")
    assert not after & before
    for _ in range(15):  # stable: no further death seen, no further reload
        time.sleep(0.2)
        assert stubs_of(pid, "twin") == after
    for thread in in_flight:
        thread.join(timeout=10)
    text = served.text()
    assert text.count("a stub of model twin died") == 1, text
    assert text.count("watchdog: model twin serves again") == 1, text
    assert infer(base, "twin", 1)[0] == 200

    (echo,) = stubs_of(pid, "echo")
    os.kill(echo, signal.SIGKILL)
    assert wait_for(lambda: ready(base) == 400, 10.0, interval=0.02), served.text()
    assert wait_for(lambda: ready(base) == 200 and infer(base, "pipeline", 1)[0] == 200, 30.0)
    assert served.text().count("watchdog: model echo serves again") == echo_repairs + 1
    assert len(stubs_of(pid, "echo")) == 1 and stubs_of(pid, "twin") == after


def test_a_reload_that_hangs_does_not_hold_up_other_repairs(served):
    """While the reload of one model hangs (its load is held), a dead stub of another model is repaired."""
    pid = served.server_pids()[-1]
    base = served.base
    echo_repairs = served.text().count("watchdog: model echo serves again")
    served.hold_load.touch()
    try:
        (held,) = stubs_of(pid, "held")
        os.kill(held, signal.SIGKILL)
        assert wait_for(lambda: "a stub of model held died" in served.text(), 10.0), served.text()
        time.sleep(1.0)  # the watchdog now waits for the held load
        assert "model held serves again" not in served.text()
        (echo,) = stubs_of(pid, "echo")
        os.kill(echo, signal.SIGKILL)
        assert wait_for(
            lambda: served.text().count("watchdog: model echo serves again") == echo_repairs + 1, 30.0
        ), served.text()
        assert infer(base, "pipeline", 1)[0] == 200
        assert "model held serves again" not in served.text()
    finally:
        served.hold_load.unlink(missing_ok=True)
    assert wait_for(lambda: ready(base) == 200 and infer(base, "held", 1)[0] == 200, 30.0), served.text()
    assert served.text().count("watchdog: model held serves again") == 1
    assert len(stubs_of(pid, "held")) == 1


def test_killed_server_is_restarted(served):
    first = served.server_pids()[-1]
    killed = time.monotonic()
    os.kill(first, signal.SIGKILL)
    assert wait_for(lambda: len(served.server_pids()) == 2 and ready(served.base) == 200, 60.0), served.text()
    assert infer(served.base, "pipeline", 1)[0] == 200
    assert served.server_pids()[-1] != first
    assert re.search(
        r"tritonserver died \(killed by signal 9 \(SIGKILL\)\): crash 1, restarting in 1 s", served.text()
    )
    print(f"tritonserver SIGKILL -> serving again in {time.monotonic() - killed:.1f} s")


def test_wedged_server_is_killed_and_restarted(served):
    """A server that stops answering (SIGSTOP stands in for a deadlock) is killed and started again."""
    wedged = served.server_pids()[-1]
    os.kill(wedged, signal.SIGSTOP)
    started = time.monotonic()
    assert wait_for(lambda: len(served.server_pids()) == 3 and ready(served.base) == 200, 60.0), served.text()
    assert "tritonserver has not answered /v2/health/live for" in served.text()
    assert "crash 2, restarting" in served.text()
    assert not live_stubs(wedged)
    print(f"wedged tritonserver -> serving again in {time.monotonic() - started:.1f} s")


def test_sigterm_drains_in_flight_requests_then_leaves_nothing(served):
    pid = served.server_pids()[-1]
    prefix = served.shm_prefix()
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(infer(served.base, "echo", 1500)[0])) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    stopping = time.monotonic()
    served.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert infer(served.base, "echo", 1)[0] != 200  # new requests are refused while draining
    code = served.process.wait(timeout=EXIT_TIMEOUT + STOP_MARGIN_SECS + 10)
    for thread in threads:
        thread.join()
    assert results == [200, 200]  # both in flight when SIGTERM came: the second waited in the queue
    assert code == 0
    assert time.monotonic() - stopping < EXIT_TIMEOUT + STOP_MARGIN_SECS
    assert not live_stubs(pid)
    assert not list(Path("/dev/shm").glob(f"{prefix}*"))
    assert "tritonserver stopped (exit code 0)" in served.text()


def run_serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, float]:
    started = time.monotonic()
    process = launch(tmp_path, *args, env=env)
    try:
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    return code, (tmp_path / "serve.log").read_text(), time.monotonic() - started


def ports_args() -> list[str]:
    http_port, grpc_port, metrics_port = free_ports(3)
    return [f"--http-port={http_port}", f"--grpc-port={grpc_port}", f"--metrics-port={metrics_port}"]


@pytest.mark.parametrize(
    "env, expected",
    [
        (
            {"MODEL_PATH": "/nonexistent/Qwen3-VL-Embedding-8B"},
            "MODEL_PATH = '/nonexistent/Qwen3-VL-Embedding-8B': no such directory",
        ),
        (
            {"MODEL_PATH": "Qwen/Qwen3-VL-Embedding-2B"},
            "is a Hugging Face repo id, but a local directory is needed",
        ),
        (
            {"RERANKER_MODEL_PATH": str(REPO / "tests")},
            "the directory has no config.json and no tokenizer.json",
        ),
        # 99: no host has that many, so this fails on GPU/NPU hosts too (there: "only N ... visible").
        ({"DEVICE": "cuda:99"}, "DEVICE = 'cuda:99'"),
        ({"DEVICE": "npu:99"}, "DEVICE = 'npu:99'"),
    ],
)
def test_misconfiguration_fails_in_seconds_with_one_line(tmp_path, env, expected):
    code, output, seconds = run_serve(tmp_path, "--model-repository=model_repository", *ports_args(), env=env)
    assert code == 2
    assert output.startswith("launcher: error: ") and output.count("\n") == 1, output
    assert expected in output
    assert seconds < 10.0


def test_device_message_says_how_to_install_the_accelerator_torch(tmp_path):
    code, output, _ = run_serve(
        tmp_path, "--model-repository=model_repository", *ports_args(), env={"DEVICE": "npu"}
    )
    assert code == 2
    # A CPU test host has no torch_npu; a host with one and a device would not fail.
    assert "install torch-npu matching torch" in output or "sees no NPU" in output, output


def test_busy_port_fails_in_seconds(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        _, grpc_port, metrics_port = free_ports(3)
        args = [f"--http-port={port}", f"--grpc-port={grpc_port}", f"--metrics-port={metrics_port}"]
        code, output, seconds = run_serve(tmp_path, f"--model-repository={REPOSITORY}", *args)
    assert code == 2
    assert f"HTTP port (TRITON_HTTP_PORT) 127.0.0.1:{port} is not free" in output
    assert seconds < 10.0


def test_failed_start_leaves_no_process_or_shared_memory(tmp_path):
    """A model that fails to load stops tritonserver; nothing of it may stay behind."""
    from tools.triton_server import TritonServer

    repository = tmp_path / "repository"
    (repository / "echo" / "1").mkdir(parents=True)
    (repository / "echo" / "config.pbtxt").write_text((REPOSITORY / "echo" / "config.pbtxt").read_text())
    (repository / "echo" / "1" / "model.py").write_text(
        "class TritonPythonModel:\n"
        "    def initialize(self, args):\n"
        "        raise RuntimeError('broken on purpose')\n"
    )
    server = TritonServer(repository, log_path=tmp_path / "server.log", startup_timeout=60)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with code"):
        server.start()
    assert time.monotonic() - started < 30
    assert "broken on purpose" in (tmp_path / "server.log").read_text()
    assert not server.leftover_shm()
    assert not live_stubs(server.pid)


def test_stop_with_a_dead_stub_leaves_nothing(tmp_path):
    """Without the watchdog a dead stub stays dead; stopping such a server (which 2.51 can deadlock on)
    still ends within the deadline with no stub or shared-memory region left."""
    from tools.triton_server import TritonServer

    server = TritonServer(REPOSITORY, log_path=tmp_path / "server.log", exit_timeout=5)
    server.start()
    (stub,) = [stub for stub, model in live_stubs(server.pid).items() if model == "echo"]
    os.kill(stub, signal.SIGKILL)
    assert infer(f"http://{server.http_url}", "echo", 1)[0] != 200  # "Stub process ... is not healthy"
    stopping = time.monotonic()
    server.stop()
    assert time.monotonic() - stopping < 5 + STOP_MARGIN_SECS + 5
    assert not live_stubs(server.pid)
    assert not server.leftover_shm()


def test_standalone_watchdog_repairs_a_server_started_elsewhere(tmp_path):
    """`python -m tools.watchdog` beside a tritonserver it did not start (NGC's, in a container)."""
    from tools.triton_server import TritonServer

    with TritonServer(REPOSITORY, log_path=tmp_path / "server.log", exit_timeout=5) as server:
        base = f"http://{server.http_url}"
        watchdog = subprocess.Popen(
            [sys.executable, "-m", "tools.watchdog", f"--url={base}", f"--server-pid={server.pid}"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert wait_for(lambda: live_stubs(server.pid), 10.0)
            time.sleep(1.0)  # let it take its first look at the stubs
            (stub,) = [stub for stub, model in live_stubs(server.pid).items() if model == "echo"]
            os.kill(stub, signal.SIGKILL)
            assert wait_for(lambda: ready(base) == 400, 10.0, interval=0.02)
            assert wait_for(lambda: ready(base) == 200 and infer(base, "pipeline", 1)[0] == 200, 60.0)
        finally:
            server.stop()
            output = watchdog.communicate(timeout=15)[0]
    assert watchdog.returncode == 0  # it ends with the server
    assert "watchdog: model echo serves again" in output


def test_watchdog_gives_up_on_a_model_that_keeps_losing_stubs(tmp_path, monkeypatch, caplog):
    """Past MAX_RELOADS_PER_WINDOW reloads of one model the watchdog stops, unloads it (its requests fail
    at once rather than on a dead stub) and says so; other models are still repaired.
    The backoff is shortened so that the test takes seconds, not the 2 + 4 + 8 s of production."""
    import tools.watchdog as watchdog_module
    from tools.triton_server import TritonServer

    monkeypatch.setattr(watchdog_module, "RELOAD_BACKOFF_FIRST_SECS", 0.1)
    caplog.set_level("INFO", logger="launcher")
    with TritonServer(REPOSITORY, log_path=tmp_path / "server.log", exit_timeout=5) as server:
        base = f"http://{server.http_url}"
        watchdog = watchdog_module.StubWatchdog(server.pid, base).start()
        try:
            for reload in range(watchdog_module.MAX_RELOADS_PER_WINDOW):
                (held,) = stubs_of(server.pid, "held")
                os.kill(held, signal.SIGKILL)
                done = lambda n=reload + 1: len(watchdog.recoveries) == n  # noqa: E731
                assert wait_for(done, 30.0), caplog.text
            (held,) = stubs_of(server.pid, "held")
            os.kill(held, signal.SIGKILL)
            assert wait_for(lambda: "giving up on model held" in caplog.text, 10.0), caplog.text
            states = watchdog_module.RepositoryApi(base).model_states
            assert wait_for(
                lambda: states()["held"] == "UNAVAILABLE" and not stubs_of(server.pid, "held"), 20.0
            )
            assert http("GET", f"{base}/v2/models/held/ready")[0] == 400
            assert infer(base, "held", 1)[0] == 404  # unknown: unloaded
            (echo,) = stubs_of(server.pid, "echo")
            os.kill(echo, signal.SIGKILL)
            assert wait_for(lambda: any(model == "echo" for model, _ in watchdog.recoveries), 30.0)
            assert infer(base, "pipeline", 1)[0] == 200
            assert [m for m, _ in watchdog.recoveries].count("held") == watchdog_module.MAX_RELOADS_PER_WINDOW
        finally:
            watchdog.stop()


def test_an_ensemble_left_unloaded_is_loaded_again_after_its_step_is_reloaded(tmp_path, caplog):
    """The ensemble pipeline unloaded (tritonserver's /v2/health/ready stays 200 while it answers 404): once
    its step echo is reloaded after a dead stub, the watchdog finds pipeline not READY in the repository
    index and loads it, so the server serves whole again."""
    import tools.watchdog as watchdog_module
    from tools.triton_server import TritonServer

    caplog.set_level("INFO", logger="launcher")
    with TritonServer(REPOSITORY, log_path=tmp_path / "server.log", exit_timeout=5) as server:
        base = f"http://{server.http_url}"
        escalations: list[str] = []
        watchdog = watchdog_module.StubWatchdog(server.pid, base, on_escalate=escalations.append).start()
        try:
            api = watchdog_module.RepositoryApi(base)
            api.unload("pipeline")
            assert wait_for(lambda: api.model_states()["pipeline"] == "UNAVAILABLE", 10.0)
            assert ready(base) == 200 and infer(base, "pipeline", 1)[0] == 404  # the gap of issue #10
            (echo,) = stubs_of(server.pid, "echo")
            os.kill(echo, signal.SIGKILL)
            assert wait_for(lambda: infer(base, "pipeline", 1)[0] == 200, 30.0), caplog.text
            assert ready(base) == 200
            noticed = "after reloading echo, not serving: pipeline UNAVAILABLE, echo READY; loading them"
            assert noticed in caplog.text
            assert escalations == []  # loading it was enough
        finally:
            watchdog.stop()


EMBEDDING_REQUEST = {
    "inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": ["a short text to embed"]}]
}


def embed(base: str) -> tuple[int, bytes]:
    return http("POST", f"{base}/v2/models/qwen3_vl_embedding/infer", EMBEDDING_REQUEST, timeout=60.0)


def test_stub_dying_past_the_watchdog_limit_restarts_tritonserver(tmp_path, tiny_model_path):
    """Issue #10: a model that keeps losing its stub must not leave /v2/health/ready at 200 while its
    ensemble answers 404. With one reload allowed (--max-stub-reloads=1), the embedding model's stub is
    killed twice: the first death is repaired by a reload, the second makes the launcher restart
    tritonserver; readiness is not 200 from the restart until the new server serves, and then an embedding
    request succeeds. The real embedding ensemble (tiny checkpoint) is served, and only it, to keep the
    two starts short."""
    http_port, grpc_port, metrics_port = free_ports(3)
    process = launch(
        tmp_path,
        "--model-repository=model_repository",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        f"--exit-timeout-secs={EXIT_TIMEOUT}",
        "--max-stub-reloads=1",
        "--",
        "--load-model=qwen3_vl_embedding",
        # Deployment overrides set in the caller's shell would change what is served: unset them.
        env=dict.fromkeys(SERVER_ENV_VARIABLES),
    )
    served = Served(process, tmp_path / "serve.log", http_port, grpc_port, metrics_port)
    base = served.base
    model = "qwen3_vl_embedding_model"
    try:
        assert wait_for(lambda: ready(base) == 200 and served.server_pids(), 240.0), served.text()
        assert embed(base)[0] == 200
        # On a CPU-only host with two cores, two instances of the model step (tools.repository), served from
        # a copy of the repository; one core (or a GPU) keeps the repository's one.
        instances = 2 if len(os.sched_getaffinity(0)) >= 2 and not Path("/dev/nvidiactl").exists() else 1
        config = json.loads(http("GET", f"{base}/v2/models/{model}/config")[1])
        assert config["instance_group"][0]["count"] == instances
        assert len(stubs_of(served.server_pids()[-1], model)) == instances
        if instances == 2:
            assert "model steps: 2 instance(s) each (CPU only, " in served.text()
        first = served.server_pids()[-1]
        os.kill(min(stubs_of(first, model)), signal.SIGKILL)
        reloaded = f"watchdog: model {model} serves again"
        assert wait_for(lambda: reloaded in served.text(), 120.0), served.text()
        assert wait_for(lambda: ready(base) == 200 and embed(base)[0] == 200, 60.0), served.text()
        assert served.server_pids() == [first]  # one reload is within the limit

        with Readiness(base) as readiness:
            killed = time.monotonic()
            os.kill(min(stubs_of(first, model)), signal.SIGKILL)
            assert wait_for(lambda: "restarting tritonserver: the stub watchdog" in served.text(), 30.0), (
                served.text()
            )
            restarting = time.monotonic()
            # The old server goes (SIGTERM; a dead stub can make it wait out its exit timeout) ...
            assert wait_for(lambda: not Path(f"/proc/{first}").exists(), EXIT_TIMEOUT + STOP_MARGIN_SECS + 10)
            gone = time.monotonic()
            # ... and the new one serves.
            assert wait_for(lambda: len(served.server_pids()) == 2 and ready(base) == 200, 240.0), (
                served.text()
            )
            back = time.monotonic()
        # Not ready from the restart on: the old server answered no 200 while it stopped (and after it was
        # gone only the new server, once ready, could).
        stopping = readiness.between(restarting, gone)
        assert stopping and 200 not in stopping, readiness.answers
        assert embed(base)[0] == 200
        assert not live_stubs(first)
        # The model step's backpressure channel: there while a server serves, gone with a killed one.
        assert [path.name for path in channel_files(served.server_pids()[-1])] == [
            f"qwen3vl-backpressure-{served.server_pids()[-1]}-qwen3_vl_embedding"
        ]
        assert not channel_files(first)
        text = served.text()
        assert re.search(
            rf"restarting tritonserver: the stub watchdog cannot repair it \(model {model} lost a stub again "
            r"after 1 reload\(s\) in 300 s\): crash 1, stopping it \(not ready from now on\) and starting it "
            r"1 s after it stops",
            text,
        ), text
        assert text.count(reloaded) == 1  # the second death was not reloaded
        print(
            f"second stub SIGKILL -> restart requested in {restarting - killed:.1f} s, old server gone "
            f"{gone - restarting:.1f} s later, serving again {back - restarting:.1f} s after the restart "
            "began"
        )
    finally:
        stop_launcher(served)


def test_sigterm_while_models_load_stops_at_once_and_leaves_nothing(tmp_path):
    repository = tmp_path / "repository"
    (repository / "echo" / "1").mkdir(parents=True)
    (repository / "echo" / "config.pbtxt").write_text((REPOSITORY / "echo" / "config.pbtxt").read_text())
    (repository / "echo" / "1" / "model.py").write_text(
        "import time\n\n\n"
        "class TritonPythonModel:\n"
        "    def initialize(self, args):\n"
        "        time.sleep(30)  # a big checkpoint loading\n"
    )
    process = launch(tmp_path, f"--model-repository={repository}", *ports_args())
    log = tmp_path / "serve.log"
    assert wait_for(lambda: "TRITONBACKEND_ModelInstanceInitialize: echo" in log.read_text(), 20.0)
    stopping = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert time.monotonic() - stopping < 15.0  # not the 30 s the model would take to load
    text = log.read_text()
    assert "stopped before tritonserver was ready" in text
    prefix = re.search(r"shm prefix (\S+)\)", text).group(1)
    assert not list(Path("/dev/shm").glob(f"{prefix}*"))
    assert not processes_mentioning(str(repository))  # no tritonserver, no stub


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def test_installed_tritonserver_is_supervised_the_same(tmp_path):
    """`serve --tritonserver PATH` (the CUDA image's path to NGC's server) with the wheel's own binary and
    backend directory standing in for NGC's layout: the same binary, only given explicitly, its libraries
    found through the environment as NGC's image sets them. The launcher runs it as given, and a dead stub
    and a dead server still come back."""
    from tools.triton_install import find_triton, prepare_runtime_dir, server_env, venv_python_version

    install = find_triton(venv_python_version(Path(sys.prefix)))
    layout = prepare_runtime_dir(tmp_path / "installed", install)
    libraries = server_env(Path(sys.prefix), layout, install)["LD_LIBRARY_PATH"]
    http_port, grpc_port, metrics_port = free_ports(3)
    process = launch(
        tmp_path,
        f"--tritonserver={install.server_binary}",
        f"--backend-directory={layout.backend_dir}",
        f"--cache-directory={layout.cache_dir}",
        f"--model-repository={REPOSITORY}",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        f"--exit-timeout-secs={EXIT_TIMEOUT}",
        env={"LD_LIBRARY_PATH": libraries},
    )
    served = Served(process, tmp_path / "serve.log", http_port, grpc_port, metrics_port)
    try:
        # The launcher logs the server's pid just after it turns ready.
        assert wait_for(lambda: ready(served.base) == 200 and served.server_pids(), 60.0), served.text()
        pid = served.server_pids()[-1]
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        assert argv[:3] == [
            str(install.server_binary),
            f"--backend-directory={layout.backend_dir}",
            f"--cache-directory={layout.cache_dir}",
        ]
        assert "--model-control-mode=explicit" in argv  # what lets the watchdog reload a model
        environ = dict(
            line.split("=", 1) for line in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in line
        )
        assert (
            environ["LD_LIBRARY_PATH"] == libraries
        )  # the installation's environment, nothing of the wheel's
        assert environ["PATH"].split(os.pathsep)[0] == str(
            Path(sys.prefix) / "bin"
        )  # the stub finds the venv

        (stub,) = [stub for stub, model in live_stubs(pid).items() if model == "echo"]
        os.kill(stub, signal.SIGKILL)
        assert wait_for(lambda: ready(served.base) == 400, 10.0, interval=0.02), served.text()[-3000:]
        assert wait_for(
            lambda: ready(served.base) == 200 and infer(served.base, "pipeline", 1)[0] == 200, 60.0
        ), served.text()[-3000:]
        assert "watchdog: model echo serves again" in served.text()

        os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: len(served.server_pids()) == 2 and ready(served.base) == 200, 60.0), (
            served.text()[-3000:]
        )
        assert infer(served.base, "pipeline", 1)[0] == 200
        assert "tritonserver died (killed by signal 9 (SIGKILL)): crash 1" in served.text()

        last = served.server_pids()[-1]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=EXIT_TIMEOUT + STOP_MARGIN_SECS + 10) == 0
        assert not live_stubs(last)
        assert not list(Path("/dev/shm").glob(f"{served.shm_prefix()}*"))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        kill_servers(served)


def test_installed_tritonserver_that_is_missing_fails_at_once(tmp_path):
    code, output, seconds = run_serve(
        tmp_path, f"--tritonserver={tmp_path / 'tritonserver'}", f"--model-repository={REPOSITORY}"
    )
    assert code == 2
    assert output == f"launcher: error: --tritonserver {tmp_path / 'tritonserver'}: no such executable\n"
    assert seconds < 10.0
