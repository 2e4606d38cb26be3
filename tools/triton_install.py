"""Where tritonserver comes from and the environment it runs in.

The ``nvidia-pytriton`` wheel holds a real tritonserver 2.51, the Python backend and its stubs, but not laid
out the way ``tritonserver`` expects: ``find_triton`` locates the pieces, ``prepare_runtime_dir`` builds that
layout once (the runtime directory, ``<repo>/.triton`` by default) and ``server_env`` sets what the server
and the backend stub need. A tritonserver installed some other way (NGC's ``/opt/tritonserver`` in the CUDA
image) is an ``InstalledServer``: run as installed, the wheel neither needed nor read.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


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


def default_runtime_dir() -> Path:
    """``<repo>/.triton``, the repo being the directory that holds the ``backend`` package."""
    return Path(__file__).resolve().parent.parent / ".triton"


def venv_python(venv: Path) -> Path:
    """The venv's interpreter: the one the backend stub finds first on ``PATH``."""
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
    result = subprocess.run([str(venv_python(venv)), "-c", code], capture_output=True, text=True, check=True)
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
