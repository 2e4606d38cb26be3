"""Run the tritonserver 2.51 binary that ships inside the ``nvidia-pytriton`` wheel.

The wheel holds a real server, the Python backend and its stubs, but not laid out the way
``tritonserver`` expects: this module builds that layout once (a runtime directory), sets the
environment the server and the backend stub need, and starts/stops the server either as a managed
child process (``TritonServer``, for tests and scripts) or in the foreground (the CLI).

``serve`` (``make serve``) checks the configuration first (tools.preflight), then runs the server under
a supervisor that restarts it and reloads models whose stub died (tools.supervisor, tools.watchdog).
``serve --tritonserver PATH`` supervises a server installed some other way instead (NGC's
``/opt/tritonserver`` in the CUDA image): it runs as installed, and the wheel is neither needed nor read.

CLI::

    python -m tools.launcher serve [--model-repository DIR] [--host ADDR] [--http-port N] ... [-- EXTRA_ARGS]
    python -m tools.launcher serve --tritonserver PATH [--backend-directory DIR] [--cache-directory DIR] ...
    python -m tools.launcher prepare
    python -m tools.launcher perf-env
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import logging
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from backend.backpressure import channel_files
from tools.watchdog import MAX_RELOADS_PER_WINDOW

# The Python backend starts with 1 MiB per stub and grows in 1 MiB steps; a bigger first region
# avoids repeated growth for image/video tensors.
SHM_DEFAULT_BYTE_SIZE = 16 * 1024 * 1024
# Python backend's own default prefix; ours adds a per-server tag after it so that a server killed
# with SIGKILL can have exactly its leftovers removed.
SHM_PREFIX_BASE = "triton_python_backend_shm_region_"
# How long tritonserver waits for in-flight requests and model unloads after SIGTERM (unloading the
# four Python models takes 6-9 s on a busy 2-core host) ...
EXIT_TIMEOUT_SECS = 10
# ... and how much longer stop() waits before it kills the whole process group.
STOP_MARGIN_SECS = 10.0
# `make serve` gives in-flight requests of real checkpoints more time; with the margin it ends within the
# 30 s a Kubernetes pod gets by default between SIGTERM and SIGKILL.
SERVE_EXIT_TIMEOUT_SECS = 20
STUB_GRACE_SECS = 3.0
LOG_TAIL_LINES = 60
DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002
# free_ports picks test and perf servers' ports from here up to the kernel's ephemeral range.
FREE_PORT_LOWEST = 20000
# `make serve` answers only on this machine; containers pass --host 0.0.0.0 (README "Operations").
DEFAULT_HOST = "127.0.0.1"
# Loading real 8B checkpoints (and compiling them) can take many minutes.
SERVE_STARTUP_TIMEOUT_SECS = 3600.0


@dataclass(frozen=True)
class TritonInstall:
    """Where the pieces of the server live inside the installed pytriton wheel."""

    package_dir: Path
    server_binary: Path
    python_backend_dir: Path
    stub: Path
    cache_dir: Path
    libs_dir: Path
    python_version: str


@dataclass(frozen=True)
class RuntimeDirs:
    """The laid-out copy the server runs from.

    ``backend_dir`` is the ``--backend-directory`` (it holds ``python/``), ``cache_dir`` the
    ``--cache-directory`` (it holds ``local/``), ``lib_dir`` the soname symlinks perf_analyzer needs.
    """

    root: Path
    backend_dir: Path
    cache_dir: Path
    lib_dir: Path


@dataclass(frozen=True)
class InstalledServer:
    """A tritonserver installed outside the wheel (NGC's image), run as it is: its image already gives it
    the libraries it needs, and a directory left None is the server's own default
    (``/opt/tritonserver/backends`` and ``/opt/tritonserver/caches``)."""

    binary: Path
    backend_dir: Path | None = None
    cache_dir: Path | None = None

    def command(self) -> list[str]:
        """The binary and the directory options that locate its backends and caches."""
        return [
            str(self.binary),
            *([f"--backend-directory={self.backend_dir}"] if self.backend_dir else []),
            *([f"--cache-directory={self.cache_dir}"] if self.cache_dir else []),
        ]

    def env(self, venv: Path) -> dict[str, str]:
        """This environment with the venv's python3 first on PATH: the Python backend stub finds the venv
        (torch, transformers) through it, as under the wheel's server."""
        env = dict(os.environ)
        env["PATH"] = _prepend_path([Path(venv) / "bin"], env.get("PATH"))
        return env


def wheel_server(runtime: RuntimeDirs, install: TritonInstall) -> list[str]:
    """The wheel's binary and the directory options that point it at the laid-out runtime directory."""
    return [
        str(install.server_binary),
        f"--backend-directory={runtime.backend_dir}",
        f"--cache-directory={runtime.cache_dir}",
    ]


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise RuntimeError(f"{what} not found at {path}; is nvidia-pytriton==0.7.0 installed in this Python?")
    return path


def find_triton(python_version: str | None = None) -> TritonInstall:
    """Locate the server, backend, stub, cache and bundled libs of the installed pytriton wheel.

    ``python_version`` ("3.11") picks the backend stub; it must match the Python of the venv the
    stub will run in, and defaults to the running interpreter's.
    """
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("package 'pytriton' not importable: pip install nvidia-pytriton==0.7.0")
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    server_root = _require(package_dir / "tritonserver", "pytriton's tritonserver directory")
    python_backend_dir = _require(server_root / "backends" / "python", "Python backend")
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        _require(python_backend_dir / name, "Python backend file")
    return TritonInstall(
        package_dir=package_dir,
        server_binary=_require(server_root / "bin" / "tritonserver", "tritonserver binary"),
        python_backend_dir=python_backend_dir,
        stub=_require(
            server_root / "python_backend_stubs" / version / "triton_python_backend_stub",
            f"Python backend stub for Python {version} (the wheel has 3.8 to 3.13)",
        ),
        cache_dir=_require(server_root / "caches" / "local", "local cache plugin"),
        libs_dir=_require(package_dir.parent / "nvidia_pytriton.libs", "bundled libraries"),
        python_version=version,
    )


def _same_file(src: Path, dst: Path) -> bool:
    # copy2 keeps mtime, so size + mtime identify an up-to-date copy without reading 20 MB.
    if not dst.exists() or dst.is_symlink():
        return False
    a, b = src.stat(), dst.stat()
    return a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns


def _install_file(src: Path, dst: Path) -> None:
    """Copy src to dst unless already there; atomic so parallel test processes can share dst."""
    if _same_file(src, dst):
        return
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def _install_symlink(target: Path, link: Path) -> None:
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    tmp = link.with_name(f".{link.name}.{uuid.uuid4().hex}")
    tmp.symlink_to(target)
    os.replace(tmp, link)


def _bundled_lib(libs_dir: Path, stem: str, soname_suffix: str) -> Path:
    # auditwheel renames libs to <stem>-<hash>.so.<version>; the hash changes between wheel builds.
    matches = sorted(libs_dir.glob(f"{stem}-*{soname_suffix}*"))
    if not matches:
        raise RuntimeError(f"no {stem}*{soname_suffix} in {libs_dir}")
    return matches[0]


def prepare_runtime_dir(dest: Path, install: TritonInstall) -> RuntimeDirs:
    """Build (or refresh) the directory layout tritonserver and perf_analyzer run from."""
    dest = Path(dest).resolve()
    runtime = RuntimeDirs(
        root=dest,
        backend_dir=dest / "backends",
        cache_dir=dest / "caches",
        lib_dir=dest / "lib",
    )
    python_dir = runtime.backend_dir / "python"
    local_cache_dir = runtime.cache_dir / "local"
    for directory in (python_dir, local_cache_dir, runtime.lib_dir):
        directory.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        _install_file(install.python_backend_dir / name, python_dir / name)
    _install_file(install.stub, python_dir / "triton_python_backend_stub")
    for plugin in install.cache_dir.iterdir():
        if plugin.is_file():
            _install_file(plugin, local_cache_dir / plugin.name)
    _install_symlink(_bundled_lib(install.libs_dir, "libb64", ".so.0d"), runtime.lib_dir / "libb64.so.0d")
    _install_symlink(
        _bundled_lib(install.libs_dir, "libcudart", ".so.12"), runtime.lib_dir / "libcudart.so.12"
    )
    return runtime


def _venv_python(venv: Path) -> Path:
    for name in ("python3", "python"):
        candidate = venv / "bin" / name
        if candidate.exists():
            return candidate
    raise RuntimeError(f"no python3 in {venv / 'bin'}")


def _is_running_venv(venv: Path) -> bool:
    return Path(venv).resolve() == Path(sys.prefix).resolve()


def venv_python_version(venv: Path) -> str:
    """major.minor of the venv's Python, i.e. which backend stub it needs."""
    if _is_running_venv(venv):
        return f"{sys.version_info.major}.{sys.version_info.minor}"
    cfg = Path(venv) / "pyvenv.cfg"
    if cfg.exists():
        for line in cfg.read_text().splitlines():
            key, _, value = line.partition("=")
            # venv writes "version", uv and virtualenv write "version_info".
            if key.strip() in ("version", "version_info") and value.strip():
                return ".".join(value.strip().split(".")[:2])
    return _query_venv(venv, "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')")


def _query_venv(venv: Path, code: str) -> str:
    result = subprocess.run([str(_venv_python(venv)), "-c", code], capture_output=True, text=True, check=True)
    return result.stdout.strip()


def base_python_libdir(venv: Path) -> Path:
    """LIBDIR of the interpreter the venv was made from (a venv's sysconfig reports its base's)."""
    if _is_running_venv(venv):
        libdir = sysconfig.get_config_var("LIBDIR")
    else:
        libdir = _query_venv(venv, "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))")
    if not libdir:
        raise RuntimeError(f"cannot tell the base interpreter's LIBDIR for {venv}")
    return Path(libdir)


def _prepend_path(entries: Sequence[Path | str], previous: str | None) -> str:
    parts = [str(entry) for entry in entries]
    if previous:
        parts.append(previous)
    return os.pathsep.join(parts)


def server_env(venv: Path, runtime: RuntimeDirs, install: TritonInstall) -> dict[str, str]:
    """Environment for tritonserver and its Python backend stubs."""
    env = dict(os.environ)
    # The stub's embedded interpreter ignores PYTHONPATH; it finds its venv through python3 on PATH.
    env["PATH"] = _prepend_path([Path(venv) / "bin"], env.get("PATH"))
    # The base libdir goes first so the stub loads the libpython the venv was built on, not another.
    env["LD_LIBRARY_PATH"] = _prepend_path(
        [base_python_libdir(venv), install.libs_dir, runtime.lib_dir], env.get("LD_LIBRARY_PATH")
    )
    return env


def perf_analyzer_env(runtime: RuntimeDirs, install: TritonInstall) -> dict[str, str]:
    """Environment in which ``<venv>/bin/perf_analyzer`` finds libb64 and libcudart."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = _prepend_path([runtime.lib_dir, install.libs_dir], env.get("LD_LIBRARY_PATH"))
    return env


def control_args(extra_args: Sequence[str]) -> list[str]:
    """Explicit model control with every model loaded, unless ``extra_args`` choose otherwise.

    Explicit mode is what lets the watchdog (tools.watchdog) unload and reload a model whose stub
    died; with ``--load-model=*`` it serves the same models as the default "none" mode.
    """
    if any(arg.startswith("--model-control-mode") for arg in extra_args):
        return []
    loads = [] if any(arg.startswith("--load-model") for arg in extra_args) else ["--load-model=*"]
    return ["--model-control-mode=explicit", *loads]


def has_nvidia_gpu() -> bool:
    return Path("/dev/nvidiactl").exists()


def cpu_host_args() -> list[str]:
    """On a host without an NVIDIA driver, skip what can only warn: the pinned and CUDA memory pools
    and GPU metrics (NVML/DCGM). Two error lines remain, see README "Log lines on a CPU host"."""
    if has_nvidia_gpu():
        return []
    return [
        "--pinned-memory-pool-byte-size=0",
        "--cuda-memory-pool-byte-size=0:0",
        "--allow-gpu-metrics=false",
    ]


def server_command(
    model_repository: Path,
    server: Sequence[str],
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    extra_args: Sequence[str] = (),
    log_verbose: int = 0,
    shm_prefix: str | None = None,
    host: str = DEFAULT_HOST,
    exit_timeout: int = EXIT_TIMEOUT_SECS,
) -> list[str]:
    """The tritonserver argv: ``server`` (binary and directory options, from ``wheel_server`` or
    ``InstalledServer.command``), then the options; ``extra_args`` come last so they can override them."""
    command = [
        *server,
        f"--model-repository={Path(model_repository).resolve()}",
        f"--http-address={host}",
        f"--http-port={http_port}",
        f"--grpc-address={host}",
        f"--grpc-port={grpc_port}",
        f"--metrics-address={host}",
        f"--metrics-port={metrics_port}",
        f"--backend-config=python,shm-default-byte-size={SHM_DEFAULT_BYTE_SIZE}",
        f"--exit-timeout-secs={exit_timeout}",
        f"--log-verbose={log_verbose}",
        # Every config is complete; without this the Python backend starts one more stub per model load
        # only to ask model.py for config additions, which imports torch: 7-20 s of each (re)load.
        "--disable-auto-complete-config",
        *control_args(extra_args),
        *cpu_host_args(),
    ]
    if shm_prefix:
        command.append(f"--backend-config=python,shm-region-prefix-name={shm_prefix}")
    command.extend(extra_args)
    return command


def ephemeral_port_range() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections (Linux's default if unreadable)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (all held open together so none repeats), from below the
    kernel's ephemeral range where it leaves room: a port the kernel hands out (bind to 0) can be taken by
    any program's outgoing connection while the server on it is restarted (the supervisor restarts on the
    same ports; seen: gRPC "Address already in use" for 3 min of restarts while load tests ran)."""
    low = ephemeral_port_range()[0]
    candidates = list(range(FREE_PORT_LOWEST, low))
    random.shuffle(candidates)
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for port in [*candidates[: 64 * n], *[0] * n]:  # 0: the kernel's choice, should all those be taken
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            ports.append(sock.getsockname()[1])
            if len(ports) == n:
                return ports
        raise OSError(f"no {n} free TCP ports on 127.0.0.1")


def free_port() -> int:
    return free_ports(1)[0]


def default_runtime_dir() -> Path:
    """``<repo>/.triton``, the repo being the directory that holds the ``backend`` package."""
    return Path(__file__).resolve().parent.parent / ".triton"


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"<cannot read {path}: {error}>"
    return "\n".join(text.splitlines()[-lines:])


def connect_host(host: str) -> str:
    """Where a local client reaches a server bound to ``host`` (a wildcard address means loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _is_ready(host: str, http_port: int) -> bool:
    return _health(host, http_port, "ready")


def is_live(host: str, http_port: int, timeout: float = 2.0) -> bool:
    return _health(host, http_port, "live", timeout)


def _health(host: str, http_port: int, what: str, timeout: float = 1.0) -> bool:
    url = f"http://{host}:{http_port}/v2/health/{what}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        # 400 (not ready yet), connection refused, timeouts and a non-HTTP answer (another process took the
        # port first: BadStatusLine) all just mean "poll again".
        return False


class StartCancelled(RuntimeError):
    """``start()`` was told to give up (the launcher got SIGTERM while models were loading)."""


class TritonServer:
    """A tritonserver child process, started in its own session so that it can be killed whole.

    Use as a context manager, or call ``start()`` / ``stop()``. ``log_path="-"`` lets the server write
    to this process's stdout/stderr (``make serve``); otherwise it logs to a file (a temporary one by
    default).
    """

    def __init__(
        self,
        model_repository: Path | str,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        runtime_dir: Path | str | None = None,
        venv: Path | str | None = None,
        log_path: Path | str | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 240.0,
        log_verbose: int = 0,
        host: str = DEFAULT_HOST,
        exit_timeout: int = EXIT_TIMEOUT_SECS,
        installed: InstalledServer | None = None,
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        # None: the wheel's server, run from runtime_dir; else that installed server (runtime_dir unused).
        self.installed = installed
        ports = iter(free_ports(3))
        self.http_port = http_port or next(ports)
        self.grpc_port = grpc_port or next(ports)
        self.metrics_port = metrics_port or next(ports)
        self.runtime_dir = Path(runtime_dir) if runtime_dir else default_runtime_dir()
        self.venv = Path(venv) if venv else Path(sys.prefix)
        self.to_console = str(log_path) == "-"
        self.log_path = Path(log_path) if log_path and not self.to_console else None
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.log_verbose = log_verbose
        self.host = host
        # A --exit-timeout-secs among extra_args wins (tritonserver takes the last); stop() waits for it.
        passed = [arg.split("=", 1)[1] for arg in extra_args if arg.startswith("--exit-timeout-secs=")]
        self.exit_timeout = int(passed[-1]) if passed else exit_timeout
        self.startup_seconds: float | None = None
        self.shm_prefix = f"{SHM_PREFIX_BASE}{uuid.uuid4().hex[:12]}_"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"{connect_host(self.host)}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{connect_host(self.host)}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{connect_host(self.host)}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _open_log(self) -> Path:
        if self.log_path is None:
            # Kept after stop(): the log is the only record of why a test server misbehaved.
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        return self.log_path

    def start(self, cancel: threading.Event | None = None) -> TritonServer:
        """Start and wait until ready; on any failure nothing is left running and no /dev/shm region
        stays behind. A set ``cancel`` event stops the wait with ``StartCancelled``."""
        if self.is_running():
            raise RuntimeError("TritonServer already running")
        if self.installed is None:
            install = find_triton(venv_python_version(self.venv))
            runtime = prepare_runtime_dir(self.runtime_dir, install)
            server, env = wheel_server(runtime, install), server_env(self.venv, runtime, install)
        else:
            server, env = self.installed.command(), self.installed.env(self.venv)
        command = server_command(
            self.model_repository,
            server,
            self.http_port,
            self.grpc_port,
            self.metrics_port,
            self.extra_args,
            self.log_verbose,
            shm_prefix=self.shm_prefix,
            host=self.host,
            exit_timeout=self.exit_timeout,
        )
        started = time.monotonic()
        with contextlib.ExitStack() as stack:
            output = None if self.to_console else stack.enter_context(self._open_log().open("ab"))
            self._process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT if output else None,
                start_new_session=True,
            )
        try:
            self._wait_ready(started + self.startup_timeout, cancel)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _failure_detail(self) -> str:
        if self.log_path is None:
            return "see its log above"
        return f"last lines of {self.log_path}:\n{_tail(self.log_path)}"

    def _wait_ready(self, deadline: float, cancel: threading.Event | None) -> None:
        assert self._process is not None
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"tritonserver exited with code {self._process.returncode} before becoming "
                    f"ready; {self._failure_detail()}"
                )
            if _is_ready(connect_host(self.host), self.http_port):
                return
            if cancel is not None and cancel.is_set():
                raise StartCancelled("tritonserver start cancelled")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"tritonserver not ready after {self.startup_timeout:.1f} s; {self._failure_detail()}"
                )
            time.sleep(0.1)

    def stop(self, grace: float | None = None) -> int | None:
        """Graceful stop; returns the exit code. Idempotent.

        SIGTERM goes to tritonserver alone: it refuses new requests, lets in-flight ones finish and
        unloads the models (stopping their stubs) within ``--exit-timeout-secs``. Should it still run
        ``grace`` seconds later (default: the exit timeout plus a margin; a server with a dead stub can
        deadlock), the whole process group is killed. Leftover stubs and shared-memory regions are
        removed either way.

        Close clients first: the server waits out ``--exit-timeout-secs`` for every open HTTP
        keep-alive connection (a live ``InferenceServerClient``) and then exits with code 1.
        """
        process = self._process
        if process is None:
            return None
        pgid = process.pid  # start_new_session made the server its group's leader
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.exit_timeout + STOP_MARGIN_SECS if grace is None else grace)
            except subprocess.TimeoutExpired:
                signal_group(pgid, signal.SIGKILL)
                process.wait()
        # Stubs outlive a server that timed out or was killed and notice it only about a second
        # later; give them that second to clean up before they are killed too.
        if not _wait_group_gone(pgid, STUB_GRACE_SECS):
            signal_group(pgid, signal.SIGKILL)
            _wait_group_gone(pgid, STUB_GRACE_SECS)
        self.remove_leftover_shm()
        for path in channel_files(pgid):  # a killed model step leaves its file behind
            with contextlib.suppress(OSError):
                path.unlink()
        return process.returncode

    def leftover_shm(self) -> list[Path]:
        shm = Path("/dev/shm")
        return sorted(shm.glob(f"{self.shm_prefix}*")) if shm.is_dir() else []

    def remove_leftover_shm(self) -> None:
        # A clean shutdown unlinks these itself; after a SIGKILL they would stay in /dev/shm forever.
        for region in self.leftover_shm():
            with contextlib.suppress(OSError):
                region.unlink()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is left in the group.

    killpg(pgid, 0) alone also counts zombies: orphaned stubs are reparented to PID 1, which in a
    container may reap them seconds late, and a zombie holds no resources worth waiting for.
    """
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _env_port(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.launcher",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runtime-dir", type=Path, default=None, help="default: <repo>/.triton")
    parser.add_argument("--venv", type=Path, default=None, help="default: this Python's prefix")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="run tritonserver in the foreground (arguments after -- go to tritonserver)"
    )
    serve.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    serve.add_argument("--http-port", type=int, default=_env_port("TRITON_HTTP_PORT", DEFAULT_HTTP_PORT))
    serve.add_argument("--grpc-port", type=int, default=_env_port("TRITON_GRPC_PORT", DEFAULT_GRPC_PORT))
    serve.add_argument(
        "--metrics-port", type=int, default=_env_port("TRITON_METRICS_PORT", DEFAULT_METRICS_PORT)
    )
    serve.add_argument(
        "--host",
        default=os.environ.get("TRITON_HOST") or DEFAULT_HOST,
        help=f"address HTTP, gRPC and metrics bind to (TRITON_HOST; default {DEFAULT_HOST}, 0.0.0.0 = all)",
    )
    serve.add_argument(
        "--exit-timeout-secs",
        type=int,
        default=SERVE_EXIT_TIMEOUT_SECS,
        help="after SIGTERM, how long in-flight requests may finish before the server is killed",
    )
    serve.add_argument("--startup-timeout", type=float, default=SERVE_STARTUP_TIMEOUT_SECS)
    serve.add_argument("--log-verbose", type=int, default=0)
    serve.add_argument("--no-watchdog", action="store_true", help="do not reload models whose stub died")
    serve.add_argument(
        "--max-stub-reloads",
        type=int,
        default=MAX_RELOADS_PER_WINDOW,
        help="reloads of one model whose stub died within 5 min; past them tritonserver is restarted "
        f"(default {MAX_RELOADS_PER_WINDOW})",
    )
    serve.add_argument(
        "--liveness-timeout",
        type=float,
        default=None,
        help="restart tritonserver when /v2/health/live has not answered for this many seconds (default 60)",
    )
    serve.add_argument(
        "--no-gateway",
        action="store_true",
        help="do not start the OpenAI/vLLM gateway (GATEWAY_PORT, default 9000) beside tritonserver",
    )
    serve.add_argument(
        "--tritonserver",
        type=Path,
        default=None,
        help="run this installed tritonserver (NGC's /opt/tritonserver/bin/tritonserver), not the wheel's",
    )
    serve.add_argument(
        "--backend-directory", type=Path, default=None, help="with --tritonserver: its backends directory"
    )
    serve.add_argument(
        "--cache-directory", type=Path, default=None, help="with --tritonserver: its caches directory"
    )
    commands.add_parser("prepare", help="build the runtime directory and print its paths")
    commands.add_parser("perf-env", help="print shell exports that let perf_analyzer run")
    return parser


def _split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def main(argv: Sequence[str] | None = None) -> int:
    own_args, passthrough = _split_passthrough(sys.argv[1:] if argv is None else argv)
    args = _build_parser().parse_args(own_args)
    venv = args.venv or Path(sys.prefix)
    if args.command == "serve" and args.tritonserver is not None:
        if not os.access(args.tritonserver, os.X_OK) or not args.tritonserver.is_file():
            print(f"launcher: error: --tritonserver {args.tritonserver}: no such executable", file=sys.stderr)
            return 2
        return serve(args, venv, passthrough)
    if args.command == "serve" and (args.backend_directory or args.cache_directory):
        print(
            "launcher: error: --backend-directory and --cache-directory go with --tritonserver",
            file=sys.stderr,
        )
        return 2
    install = find_triton(venv_python_version(venv))
    runtime = prepare_runtime_dir(args.runtime_dir or default_runtime_dir(), install)
    if args.command == "prepare":
        print(f"server_binary={install.server_binary}")
        print(f"backend_dir={runtime.backend_dir}")
        print(f"cache_dir={runtime.cache_dir}")
        print(f"lib_dir={runtime.lib_dir}")
        return 0
    if args.command == "perf-env":
        env = perf_analyzer_env(runtime, install)
        print(f"export LD_LIBRARY_PATH={shlex.quote(env['LD_LIBRARY_PATH'])}")
        return 0
    return serve(args, venv, passthrough)


def _load_model_args(passthrough: Sequence[str]) -> list[str]:
    """Model names given to tritonserver with ``--load-model=NAME`` or ``--load-model NAME``."""
    names = []
    for index, arg in enumerate(passthrough):
        if arg.startswith("--load-model="):
            names.append(arg.split("=", 1)[1])
        elif arg == "--load-model" and index + 1 < len(passthrough):
            names.append(passthrough[index + 1])
    return names


def serve(args: argparse.Namespace, venv: Path, passthrough: Sequence[str]) -> int:
    """Preflight checks, then tritonserver under the supervisor until SIGTERM / Ctrl-C."""
    from tools.preflight import PreflightError, run_preflight
    from tools.supervisor import Supervisor

    logging.basicConfig(level=logging.INFO, format="%(asctime)s launcher: %(message)s", stream=sys.stderr)
    ports = {
        "HTTP port (TRITON_HTTP_PORT)": args.http_port,
        "gRPC port (TRITON_GRPC_PORT)": args.grpc_port,
        "metrics port (TRITON_METRICS_PORT)": args.metrics_port,
    }
    try:
        run_preflight(
            args.model_repository, args.host, ports, _venv_python(venv), _load_model_args(passthrough)
        )
    except PreflightError as error:
        print(f"launcher: error: {error}", file=sys.stderr)
        return 2
    server = TritonServer(
        args.model_repository,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        runtime_dir=args.runtime_dir,
        venv=venv,
        log_path="-",
        extra_args=passthrough,
        startup_timeout=args.startup_timeout,
        log_verbose=args.log_verbose,
        host=args.host,
        exit_timeout=args.exit_timeout_secs,
        installed=installed_server(args),
    )
    gateway = None if args.no_gateway else start_gateway(args.host, args.grpc_port)
    try:
        return Supervisor(
            server,
            watch_stubs=not args.no_watchdog,
            liveness_timeout=args.liveness_timeout,
            max_stub_reloads=args.max_stub_reloads,
        ).run()
    finally:
        if gateway is not None:
            stop_gateway(gateway)


def installed_server(args: argparse.Namespace) -> InstalledServer | None:
    if args.tritonserver is None:
        return None
    return InstalledServer(args.tritonserver.resolve(), args.backend_directory, args.cache_directory)


def start_gateway(host: str, grpc_port: int) -> subprocess.Popen[bytes]:
    """``python -m gateway`` beside tritonserver, in the launcher's process group so that Ctrl-C reaches
    both; its /health follows Triton's readiness, so it may start first. Should it fail (its port taken),
    it says why and tritonserver serves on."""
    env = dict(os.environ)
    triton_host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    env.setdefault("TRITON_GRPC_URL", f"{triton_host}:{grpc_port}")
    root = Path(__file__).resolve().parent.parent
    return subprocess.Popen([sys.executable, "-m", "gateway"], cwd=root, env=env, stdin=subprocess.DEVNULL)


def stop_gateway(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # uvicorn finishes open requests, then exits
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: tools.supervisor imports tools.launcher, and
    # its classes (StartCancelled, TritonServer) must be the ones serve() uses.
    from tools.launcher import main as launcher_main

    sys.exit(launcher_main())
