"""Run the tritonserver 2.51 binary that ships inside the ``nvidia-pytriton`` wheel.

The wheel holds a real server, the Python backend and its stubs, but not laid out the way
``tritonserver`` expects: this module builds that layout once (a runtime directory), sets the
environment the server and the backend stub need, and starts/stops the server either as a managed
child process (``TritonServer``, for tests and scripts) or in the foreground (the CLI).

CLI::

    python -m tools.launcher serve [--model-repository DIR] [--http-port N] ... [-- EXTRA_ARGS]
    python -m tools.launcher prepare
    python -m tools.launcher perf-env
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

# The Python backend starts with 1 MiB per stub and grows in 1 MiB steps; a bigger first region
# avoids repeated growth for image/video tensors.
SHM_DEFAULT_BYTE_SIZE = 16 * 1024 * 1024
# Python backend's own default prefix; ours adds a per-server tag after it so that a server killed
# with SIGKILL can have exactly its leftovers removed.
SHM_PREFIX_BASE = "triton_python_backend_shm_region_"
# Well below stop()'s SIGTERM grace so that the server gives up on stuck requests before we kill it.
EXIT_TIMEOUT_SECS = 10
STOP_GRACE_SECS = 20.0
STUB_GRACE_SECS = 3.0
LOG_TAIL_LINES = 60
DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002


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


def server_command(
    model_repository: Path,
    runtime: RuntimeDirs,
    install: TritonInstall,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    extra_args: Sequence[str] = (),
    log_verbose: int = 0,
    shm_prefix: str | None = None,
) -> list[str]:
    """The tritonserver argv; ``extra_args`` come last so they can override the defaults."""
    command = [
        str(install.server_binary),
        f"--model-repository={Path(model_repository).resolve()}",
        f"--backend-directory={runtime.backend_dir}",
        f"--cache-directory={runtime.cache_dir}",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        f"--backend-config=python,shm-default-byte-size={SHM_DEFAULT_BYTE_SIZE}",
        f"--exit-timeout-secs={EXIT_TIMEOUT_SECS}",
        f"--log-verbose={log_verbose}",
    ]
    if shm_prefix:
        command.append(f"--backend-config=python,shm-region-prefix-name={shm_prefix}")
    command.extend(extra_args)
    return command


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (all held open together so none repeats)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


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


def _is_ready(http_port: int) -> bool:
    url = f"http://127.0.0.1:{http_port}/v2/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        # 400 (not ready yet), connection refused and timeouts all just mean "poll again".
        return False


class TritonServer:
    """A tritonserver child process, started in its own session so that it can be killed whole.

    Use as a context manager, or call ``start()`` / ``stop()``.
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
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        ports = iter(free_ports(3))
        self.http_port = http_port or next(ports)
        self.grpc_port = grpc_port or next(ports)
        self.metrics_port = metrics_port or next(ports)
        self.runtime_dir = Path(runtime_dir) if runtime_dir else default_runtime_dir()
        self.venv = Path(venv) if venv else Path(sys.prefix)
        self.log_path = Path(log_path) if log_path else None
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.log_verbose = log_verbose
        self.startup_seconds: float | None = None
        self.shm_prefix = f"{SHM_PREFIX_BASE}{uuid.uuid4().hex[:12]}_"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

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

    def start(self) -> TritonServer:
        if self._process is not None:
            raise RuntimeError("TritonServer already started")
        install = find_triton(venv_python_version(self.venv))
        runtime = prepare_runtime_dir(self.runtime_dir, install)
        command = server_command(
            self.model_repository,
            runtime,
            install,
            self.http_port,
            self.grpc_port,
            self.metrics_port,
            self.extra_args,
            self.log_verbose,
            shm_prefix=self.shm_prefix,
        )
        log_path = self._open_log()
        started = time.monotonic()
        with log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                env=server_env(self.venv, runtime, install),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready(started + self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _wait_ready(self, deadline: float) -> None:
        assert self._process is not None
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"tritonserver exited with code {self._process.returncode} before becoming "
                    f"ready; last lines of {self.log_path}:\n{_tail(self.log_path)}"
                )
            if _is_ready(self.http_port):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"tritonserver not ready after {self.startup_timeout:.1f} s; "
                    f"last lines of {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.1)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after a grace period; returns the exit code. Idempotent.

        Close clients first: the server waits out ``--exit-timeout-secs`` for every open HTTP
        keep-alive connection (a live ``InferenceServerClient``) and then exits with code 1.
        """
        process = self._process
        if process is None:
            return None
        pgid = process.pid  # start_new_session made the server its group's leader
        if process.poll() is None:
            _signal_group(pgid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_GRACE_SECS)
            except subprocess.TimeoutExpired:
                _signal_group(pgid, signal.SIGKILL)
                process.wait()
        # Stubs outlive a server that timed out or was killed and notice it only about a second
        # later; give them that second to clean up before they are killed too.
        if not _wait_group_gone(pgid, STUB_GRACE_SECS):
            _signal_group(pgid, signal.SIGKILL)
        self._remove_leftover_shm()
        return process.returncode

    def _remove_leftover_shm(self) -> None:
        # A clean shutdown unlinks these itself; after a SIGKILL they would stay in /dev/shm forever.
        shm = Path("/dev/shm")
        if shm.is_dir():
            for region in shm.glob(f"{self.shm_prefix}*"):
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


def _signal_group(pgid: int, sig: signal.Signals) -> None:
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
    serve.add_argument("--log-verbose", type=int, default=0)
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
    command = server_command(
        args.model_repository,
        runtime,
        install,
        args.http_port,
        args.grpc_port,
        args.metrics_port,
        passthrough,
        args.log_verbose,
    )
    sys.stdout.flush()
    # exec, not a child: Ctrl-C and SIGTERM then reach the server itself, which shuts down cleanly.
    os.execvpe(command[0], command, server_env(venv, runtime, install))
    return 0


if __name__ == "__main__":
    sys.exit(main())
