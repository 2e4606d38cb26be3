"""Smoke test of the built images: ``python -m deploy.images.smoke`` (``make image-smoke``).

Each image's entrypoint is started the way the Helm chart starts it (the containers of the rendered CPU +
gateway-sidecar variant: user, environment, ports, volumes), with ``buildah run --isolation chroot`` since
this sandbox refuses ``podman run``. The weights volume is the tiny checkpoints in models/, mounted
read-only as a PersistentVolumeClaim would be. Checked: readiness, one embedding and one rerank against the
CPU image, the gateway image's ``/v1/embeddings`` against that server, the init container's ``hf`` command,
what each container wrote (owned by the pod's user, and only under its declared writable mounts, which is
what the chart's readOnlyRootFilesystem enforces), and a clean stop: SIGTERM to the entrypoint, exit 0
within the chart's grace period, no process left in the container. Then the same pod again on a really
read-only root (buildah run has no such option: a read-only bind in a private mount namespace, chrooted).

A chroot run shares the host's network and PID namespaces, so the ports are free host ports (set through
the chart's own port values) and "the container's processes" are those whose root is its filesystem.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.render import REPO, Variant, documents, merge, render_chart, variant_values

VERSION = "0.1.0"
SERVER_IMAGE = f"localhost/qwen3-vl-triton:{VERSION}-cpu"
GATEWAY_IMAGE = f"localhost/qwen3-vl-gateway:{VERSION}"
# ascend.Dockerfile built on the Debian base instead of CANN's (build.sh ascend-python).
ASCEND_PYTHON_IMAGE = f"localhost/qwen3-vl-triton:{VERSION}-ascend-python"
# Its second run: no NPU, and torch not importing torch_npu by itself at `import torch` (device-backend
# autoload), which would fail without CANN before anything else ran.
CPU_WITHOUT_TORCH_NPU = {"DEVICE": "cpu", "TORCH_DEVICE_BACKEND_AUTOLOAD": "0"}
MODELS = REPO / "models"
EMBEDDING_CHECKPOINT = "qwen3-vl-embedding-tiny"
RERANKER_CHECKPOINT = "qwen3-vl-reranker-tiny"
# Paths buildah itself creates or mounts in every chroot run, not writes of the program.
# The pod make image-smoke starts: the CPU image with the gateway image as its sidecar.
CPU_WITH_GATEWAY = Variant("2b", "cpu", "sidecar")
RUNTIME_PATHS = ("dev", "proc", "sys", "run", "etc/hosts", "etc/resolv.conf", "etc/hostname")


@dataclass(frozen=True)
class Mount:
    path: str  # inside the container
    read_only: bool
    # What backs it here: "models" (the checkpoints), "memory" (a tmpfs directory), "disk" (a directory).
    kind: str


@dataclass(frozen=True)
class ContainerSpec:
    """What the chart gives one container: the parts a chroot run can reproduce."""

    name: str
    user: str  # uid:gid
    env: dict[str, str]
    mounts: tuple[Mount, ...]
    read_only_root: bool
    ports: dict[str, int] = field(default_factory=dict)


def smoke_values(
    ports: Sequence[int], preprocess_instances: int = 1, variant: Variant = CPU_WITH_GATEWAY
) -> dict[str, Any]:
    """A variant's values with what a user of this machine would `--set`: the tiny checkpoints from a
    claim (mounted read-only), free ports, fewer preprocess processes (2 cores)."""
    http, grpc, metrics, gateway = ports
    overrides = {
        "model": {
            "embeddingPath": f"/models/{EMBEDDING_CHECKPOINT}",
            "rerankerPath": f"/models/{RERANKER_CHECKPOINT}",
        },
        "weights": {"existingClaim": "qwen3vl-weights"},
        "triton": {"httpPort": http, "grpcPort": grpc, "metricsPort": metrics},
        "gateway": {"port": gateway, "servedModelName": EMBEDDING_CHECKPOINT},
        "preprocessInstances": preprocess_instances,
        "responseCache": {"localSizeBytes": 16 * 1024 * 1024},
    }
    return merge(variant_values(variant), overrides)


def pod_spec(values: Mapping[str, Any]) -> dict[str, Any]:
    """The rendered Deployment's pod spec."""
    rendered = render_chart(dict(values))["deployment.yaml"]
    (deployment,) = [d for d in documents(rendered) if d["kind"] == "Deployment"]
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def container_specs(pod: Mapping[str, Any]) -> dict[str, ContainerSpec]:
    """Each container of the pod spec as a ContainerSpec (literal env values only: secrets are not set)."""
    security = pod.get("securityContext", {})
    user = f"{security['runAsUser']}:{security['runAsGroup']}"
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    specs = {}
    for container in pod["containers"]:
        mounts = []
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "persistentVolumeClaim" in volume:
                kind = "models"
            elif volume.get("emptyDir", {}).get("medium") == "Memory":
                kind = "memory"
            else:
                kind = "disk"
            mounts.append(Mount(mount["mountPath"], bool(mount.get("readOnly", False)), kind))
        specs[container["name"]] = ContainerSpec(
            name=container["name"],
            user=user,
            env={item["name"]: str(item["value"]) for item in container.get("env", []) if "value" in item},
            mounts=tuple(mounts),
            read_only_root=bool(container.get("securityContext", {}).get("readOnlyRootFilesystem", False)),
            ports={port["name"]: int(port["containerPort"]) for port in container.get("ports", [])},
        )
    return specs


def run_command(
    container: str, spec: ContainerSpec, entrypoint: Sequence[str], sources: Mapping[str, Path]
) -> list[str]:
    """buildah run argv that starts the image's entrypoint as the chart's container: its user, its
    environment on top of the image's, each volume mount backed by sources[mount path]."""
    argv = ["buildah", "run", "--isolation", "chroot", "--user", spec.user]
    for name, value in spec.env.items():
        argv += ["--env", f"{name}={value}"]
    for mount in spec.mounts:
        options = "ro" if mount.read_only else "rw"
        argv += ["--volume", f"{sources[mount.path]}:{mount.path}:{options}"]
    return [*argv, container, "--", *entrypoint]


def read_only_root_command(
    root: Path,
    mount_dir: Path,
    spec: ContainerSpec,
    entrypoint: Sequence[str],
    sources: Mapping[str, Path],
    image_env: Sequence[str],
    workdir: str,
) -> list[str]:
    """argv that starts the entrypoint with the container's root filesystem really read-only, as the
    chart's readOnlyRootFilesystem asks (buildah run has no such option): in a private mount namespace,
    root (the mounted image) is bound at mount_dir and remounted read-only, /proc, /dev, /sys, the host's
    /etc/hosts and the container's volumes are mounted on it, and the entrypoint runs chrooted there as the
    pod's user with the image's environment and then the container's. Mount points are made first, as a
    container runtime makes them."""
    q = shlex.quote
    mnt = q(str(mount_dir))
    lines = ["set -e", f"mkdir -p {mnt}"]
    lines += [f"mkdir -p {q(str(root) + m.path)}" for m in spec.mounts]
    lines += [
        f"touch {q(str(root))}/etc/hosts",
        f"mount --bind {q(str(root))} {mnt}",
        f"mount -o remount,bind,ro {mnt}",
        f"mount -t proc proc {mnt}/proc",
        f"mount --rbind /dev {mnt}/dev",
        f"mount --rbind /sys {mnt}/sys",
        f"mount --bind /etc/hosts {mnt}/etc/hosts",
    ]
    for mount in spec.mounts:
        target = q(str(mount_dir) + mount.path)
        lines.append(f"mount --bind {q(str(sources[mount.path]))} {target}")
        if mount.read_only:
            lines.append(f"mount -o remount,bind,ro {target}")
    env = [*image_env, *(f"{name}={value}" for name, value in spec.env.items())]
    run = ["chroot", f"--userspec={spec.user}", str(mount_dir), "/usr/bin/env", "-i", *env]
    run += ["/bin/sh", "-c", 'cd "$0" && exec "$@"', workdir, *entrypoint]
    lines.append("exec " + " ".join(q(word) for word in run))
    return ["unshare", "--mount", "sh", "-c", "\n".join(lines)]


def unexpected_writes(changed: Sequence[str], spec: ContainerSpec) -> list[str]:
    """Files (paths relative to the root) a run changed outside the container's writable mounts and the
    paths buildah manages: what a read-only root filesystem would have refused. Directories are left out
    by the caller: the overlay copies up every parent of a changed file."""
    allowed = [m.path.strip("/") for m in spec.mounts if not m.read_only]
    read_only_mounts = [m.path.strip("/") for m in spec.mounts if m.read_only]
    unexpected = []
    for path in changed:
        path = path.strip("/")
        covered = (*allowed, *RUNTIME_PATHS)
        if any(path == p or path.startswith(p + "/") for p in covered):
            continue
        # The (empty) directories buildah creates to mount volumes on, and their parents.
        if any(p == path or p.startswith(path + "/") for p in (*allowed, *read_only_mounts)):
            continue
        unexpected.append(path)
    return unexpected


def files_under(root: Path) -> Iterator[Path]:
    for directory, _, files in os.walk(root):
        yield Path(directory)
        for name in files:
            yield Path(directory) / name


# --- running images with buildah (not unit-tested: needs buildah and built images) -----------------------


def buildah(*args: str) -> str:
    return subprocess.run(["buildah", *args], check=True, capture_output=True, text=True).stdout.strip()


def image_config(image: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(buildah("inspect", "--type", "image", image))["OCIv1"]["config"]
    return config


def http_status(url: str, body: bytes | None = None, timeout: float = 2) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


class Run:
    """One image started under buildah run (or, read_only_root, chrooted onto its read-only root), with
    its volumes, until stop()."""

    def __init__(
        self, image: str, spec: ContainerSpec, scratch: Path, log: Path, read_only_root: bool = False
    ):
        self.image, self.spec, self.log = image, spec, log
        self.container = buildah("from", "--pull-never", "--name", f"smoke-{spec.name}-{os.getpid()}", image)
        self.root = Path(buildah("mount", self.container))
        self.upper = self.root.parent / "diff"  # the overlay's upper layer: everything the run changed
        uid, gid = (int(n) for n in spec.user.split(":"))
        self.sources: dict[str, Path] = {}
        for mount in spec.mounts:
            if mount.kind == "models":
                self.sources[mount.path] = MODELS
                continue
            # emptyDir with the pod's fsGroup: writable by the pod's user; Memory-backed ones on tmpfs.
            base = Path("/dev/shm") if mount.kind == "memory" else scratch
            directory = Path(tempfile.mkdtemp(prefix=f"smoke-{spec.name}-", dir=base))
            os.chown(directory, uid, gid)
            directory.chmod(0o1777 if mount.path in {"/tmp", "/dev/shm"} else 0o770)
            self.sources[mount.path] = directory
        config = image_config(image)
        self.entrypoint = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
        self.mount_dir: Path | None = None
        if read_only_root:
            mount_dir = self.mount_dir = scratch / f"root-{spec.name}-{os.getpid()}"
            argv = read_only_root_command(
                self.root,
                mount_dir,
                spec,
                self.entrypoint,
                self.sources,
                config.get("Env") or [],
                config.get("WorkingDir") or "/",
            )
        else:
            argv = run_command(self.container, spec, self.entrypoint, self.sources)
        self.started = time.monotonic()
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def container_pids(self) -> list[int]:
        """Processes running inside this container (chroot: the host's PID namespace). buildah chroots
        them into a private bind of the rootfs, so they are told by their root mount's overlay upper
        layer, which is this container's; buildah's own chroot helper is left out."""
        marker = f"upperdir={self.upper},"
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                root_mount = next(
                    line for line in (entry / "mountinfo").read_text().splitlines() if line.split()[4] == "/"
                )
                command = (entry / "cmdline").read_bytes().split(b"\0")[0]
            except (OSError, StopIteration):
                continue
            if marker in root_mount and command != b"buildah-chroot-exec":
                pids.append(int(entry.name))
        return pids

    def entrypoint_pid(self) -> int:
        """The container's first process (what the kubelet signals): the one whose parent is outside."""
        pids = set(self.container_pids())
        for pid in sorted(pids):
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent not in pids:
                return pid
        raise RuntimeError("no process in the container")

    def mounted_at(self, path: str) -> str:
        """What the container sees at path: the mount's root within its filesystem and that filesystem's
        type (a volume bound from a host directory shows that directory)."""
        for line in Path(f"/proc/{self.entrypoint_pid()}/mountinfo").read_text().splitlines()[::-1]:
            fields = line.split()
            if fields[4] == path:
                return f"{fields[3]} ({fields[fields.index('-') + 1]})"
        return "not a mount"

    def wait_ready(self, url: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while http_status(url)[0] != 200:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.spec.name} not ready at {url}:\n{self.log.read_text()[-4000:]}")
            time.sleep(0.5)
        return time.monotonic() - self.started

    def stop(self, grace: float) -> dict[str, Any]:
        """SIGTERM to the entrypoint as the kubelet sends it; its exit status, seconds, leftovers."""
        start = time.monotonic()
        os.kill(self.entrypoint_pid(), signal.SIGTERM)
        try:
            code = self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            code = None
        seconds = time.monotonic() - start
        left = self.container_pids()
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        if code is None:
            self.process.kill()
            self.process.wait()
        return {"exit_code": code, "stop_seconds": round(seconds, 1), "processes_left": len(left)}

    def writes(self) -> dict[str, Any]:
        """Who owns what the run wrote in its writable mounts, and what it wrote anywhere else."""
        uid, gid = (int(n) for n in self.spec.user.split(":"))
        owners: dict[str, int] = {}
        foreign = []
        for mount, source in self.sources.items():
            if source == MODELS:
                continue
            for path in files_under(source):
                if path == source:
                    continue
                stat = path.lstat()
                key = f"{stat.st_uid}:{stat.st_gid}"
                owners[key] = owners.get(key, 0) + 1
                if (stat.st_uid, stat.st_gid) != (uid, gid):
                    foreign.append(f"{mount}/{path.relative_to(source)}")
        changed = [str(p.relative_to(self.upper)) for p in files_under(self.upper) if not p.is_dir()]
        return {
            "owners": owners,
            "not_owned_by_pod_user": foreign[:20],
            "outside_writable_mounts": unexpected_writes(changed, self.spec)[:50],
        }

    def remove(self) -> None:
        subprocess.run(["buildah", "umount", self.container], capture_output=True)
        subprocess.run(["buildah", "rm", self.container], capture_output=True)
        for source in self.sources.values():
            if source != MODELS:
                shutil.rmtree(source, ignore_errors=True)
        if self.mount_dir is not None and self.mount_dir.exists():
            self.mount_dir.rmdir()  # empty: its mounts lived in the run's own mount namespace


def embed_and_rerank(http_port: int) -> dict[str, Any]:
    import numpy as np
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}", network_timeout=120)
    try:
        text = httpclient.InferInput("TEXT", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[b"served from the CPU image"]], dtype=object))
        vector = client.infer("qwen3_vl_embedding", [text]).as_numpy("EMBEDDING")[0]
        inputs = []
        for name, value in (("QUERY_TEXT", b"which image?"), ("DOCUMENT_TEXT", b"the CPU image")):
            tensor = httpclient.InferInput(name, [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[value]], dtype=object))
            inputs.append(tensor)
        score = float(client.infer("qwen3_vl_reranker", inputs).as_numpy("SCORE")[0, 0])
    finally:
        client.close()
    return {
        "embedding_dim": int(vector.shape[0]),
        "embedding_norm": round(float(np.linalg.norm(vector)), 4),
        "rerank_score": round(score, 4),
    }


def gateway_embedding(port: int, model: str) -> dict[str, Any]:
    body = json.dumps({"model": model, "input": ["served through the gateway image"]}).encode()
    status, payload = http_status(f"http://127.0.0.1:{port}/v1/embeddings", body, timeout=120)
    if status != 200:
        raise RuntimeError(f"/v1/embeddings answered {status}: {payload[:500]!r}")
    answer = json.loads(payload)
    return {"status": status, "embedding_dim": len(answer["data"][0]["embedding"]), "model": answer["model"]}


def smoke(work: Path) -> dict[str, Any]:
    from tools.ports import free_ports

    values = smoke_values(free_ports(4))
    pod = pod_spec(values)
    specs = container_specs(pod)
    grace = float(pod["terminationGracePeriodSeconds"])
    triton, gateway = specs["triton"], specs["gateway"]
    results: dict[str, Any] = {"grace_seconds": grace}
    work.mkdir(parents=True, exist_ok=True)
    # The chart's init container runs `hf download` from this image: the command must be there.
    probe = buildah("from", "--pull-never", SERVER_IMAGE)
    try:
        hf = subprocess.run(
            ["buildah", "run", "--isolation", "chroot", "--user", triton.user, probe, "--", "hf", "version"],
            capture_output=True,
            text=True,
        )
    finally:
        buildah("rm", probe)
    results["init_container_hf"] = (hf.stdout or hf.stderr).strip().splitlines()[-1:]
    results.update(run_pod(work, triton, gateway, grace, read_only_root=False))
    results["read_only_root"] = run_pod(work, triton, gateway, grace, read_only_root=True)
    return results


def run_pod(
    work: Path, triton: ContainerSpec, gateway: ContainerSpec, grace: float, read_only_root: bool
) -> dict[str, Any]:
    """The server and its gateway sidecar started, asked, stopped and inspected."""
    results: dict[str, Any] = {}
    suffix = "-read-only" if read_only_root else ""
    server = Run(SERVER_IMAGE, triton, work, work / f"server{suffix}.log", read_only_root)
    front: Run | None = None
    # Triton's HTTP is not a container port (it binds loopback: the gateway is the REST door); the chroot
    # shares the host's loopback, where it is asked as an in-pod tool would.
    http_port = int(triton.env["TRITON_HTTP_PORT"])
    try:
        results["server_ready_seconds"] = round(
            server.wait_ready(f"http://127.0.0.1:{http_port}/v2/health/ready", 600), 1
        )
        results["server_requests"] = embed_and_rerank(http_port)
        results["server_mounts"] = {mount.path: server.mounted_at(mount.path) for mount in triton.mounts}
        front = Run(GATEWAY_IMAGE, gateway, work, work / f"gateway{suffix}.log", read_only_root)
        results["gateway_ready_seconds"] = round(
            front.wait_ready(f"http://127.0.0.1:{gateway.ports['gateway']}/health", 300), 1
        )
        results["gateway_request"] = gateway_embedding(
            gateway.ports["gateway"], gateway.env["SERVED_MODEL_NAME"]
        )
        results["gateway_stop"] = front.stop(grace)
        results["gateway_writes"] = front.writes()
        results["server_stop"] = server.stop(grace)
        results["server_writes"] = server.writes()
    finally:
        for run in (front, server):
            if run is not None:
                for pid in run.container_pids():
                    os.kill(pid, signal.SIGKILL)
                if run.process.poll() is None:
                    run.process.kill()
                    run.process.wait()
                run.remove()
    return results


def python_errors(text: str) -> list[str]:
    """The distinct Python exception lines in a log (buildah's own "Error: exit status" left out)."""
    found = re.findall(r"\b(\w+Error: [^\\\n]+)", text)
    # Triton's model table repeats them padded with spaces and a column bar.
    return sorted({line.rstrip(" |") for line in found if not line.startswith("Error: exit status")})


def ascend_python_smoke(work: Path) -> dict[str, Any]:
    """The Ascend image's CANN-independent part, built on the Debian base: its entrypoint script, venv
    (torch CPU wheel + torch-npu + the wheel's tritonserver) and repository, started as the chart's Ascend
    container. Without CANN it cannot serve; it must get as far as CANN's libraries, say so, and exit with
    nothing left behind: with the chart's DEVICE=npu the launcher's preflight stops it; with DEVICE=cpu and
    torch's backend autoload off, tritonserver starts, the preprocess steps load and the model steps fail
    where transformers imports torch_npu."""
    from tools.ports import free_ports

    pod = pod_spec(smoke_values(free_ports(4), variant=Variant("2b", "ascend")))
    chart = container_specs(pod)["triton"]
    work.mkdir(parents=True, exist_ok=True)
    probe = buildah("from", "--pull-never", ASCEND_PYTHON_IMAGE)
    try:
        command = ["python", "-c", "import torch_npu"]
        npu = subprocess.run(
            ["buildah", "run", "--isolation", "chroot", "--user", chart.user, probe, "--", *command],
            capture_output=True,
            text=True,
        )
    finally:
        buildah("rm", probe)
    results: dict[str, Any] = {"import_torch_npu": python_errors(npu.stderr)[-1:]}
    for label, extra in (("chart_env", {}), ("cpu_no_autoload", CPU_WITHOUT_TORCH_NPU)):
        spec = ContainerSpec(
            chart.name, chart.user, {**chart.env, **extra}, chart.mounts, chart.read_only_root, chart.ports
        )
        log = work / f"ascend-python-{label}.log"
        server = Run(ASCEND_PYTHON_IMAGE, spec, work, log)
        outcome: dict[str, Any] = {"env": extra, "entrypoint": server.entrypoint}
        try:
            started = time.monotonic()
            try:
                outcome["exit_code"] = server.process.wait(timeout=600)
            except subprocess.TimeoutExpired:
                outcome["exit_code"] = None
            outcome["exit_seconds"] = round(time.monotonic() - started, 1)
            outcome["processes_left"] = len(server.container_pids())
            text = log.read_text(errors="replace")
            outcome["preprocess_loaded"] = sorted(
                set(re.findall(r"\[(qwen3_vl_\w+_preprocess)\] backend", text))
            )
            outcome["errors"] = python_errors(text)[:4]
            outcome["writes"] = server.writes()
        finally:
            for pid in server.container_pids():
                os.kill(pid, signal.SIGKILL)
            if server.process.poll() is None:
                server.process.kill()
                server.process.wait()
            server.remove()
        results[label] = outcome
    return results


def failures(results: Mapping[str, Any]) -> list[str]:
    """What in the results breaks the images' contract with the chart (each part judged when it ran)."""
    problems = []
    if "read_only_root" in results:  # the same pod again, on a really read-only root
        problems += [f"read-only root: {problem}" for problem in failures(results["read_only_root"])]
    for name in ("server", "gateway"):
        stop = results.get(f"{name}_stop")
        if stop is not None:
            if stop.get("exit_code") != 0:
                problems.append(f"{name}: exit status {stop.get('exit_code')} after SIGTERM")
            if stop.get("processes_left"):
                problems.append(f"{name}: {stop['processes_left']} processes left after exit")
        writes = results.get(f"{name}_writes", {})
        if writes.get("not_owned_by_pod_user"):
            problems.append(f"{name}: files not owned by the pod's user: {writes['not_owned_by_pod_user']}")
        if writes.get("outside_writable_mounts"):
            problems.append(
                f"{name}: writes outside its writable mounts: {writes['outside_writable_mounts']}"
            )
    for label in ("chart_env", "cpu_no_autoload"):  # the Ascend-python runs: each stops by itself
        run = results.get(label)
        if run is None:
            continue
        if run["exit_code"] in (None, 0) or run["processes_left"]:
            problems.append(f"ascend-python {label}: exit {run['exit_code']}, {run['processes_left']} left")
        writes = run["writes"]
        if writes["not_owned_by_pod_user"] or writes["outside_writable_mounts"]:
            problems.append(f"ascend-python {label}: writes {writes}")
    if "cpu_no_autoload" in results and len(results["cpu_no_autoload"]["preprocess_loaded"]) != 2:
        problems.append("ascend-python: the preprocess steps did not load")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.images.smoke", description=__doc__)
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(os.environ.get("IMAGE_WORK_DIR", "/var/tmp/qwen3vl-images")) / "smoke",
    )
    parser.add_argument(
        "--ascend-python",
        action="store_true",
        help=f"smoke {ASCEND_PYTHON_IMAGE} (make image-ascend-python) instead of the CPU and gateway images",
    )
    args = parser.parse_args(argv)
    results = ascend_python_smoke(args.work) if args.ascend_python else smoke(args.work)
    print(json.dumps(results, indent=2))
    problems = failures(results)
    for problem in problems:
        print(f"image-smoke: FAIL {problem}", file=sys.stderr)
    if not problems:
        print("image-smoke: OK", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
