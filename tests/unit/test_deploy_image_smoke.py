"""make image-smoke's pure parts (deploy/images/smoke.py): the containers it starts are the chart's, and
what it counts as a write outside the writable mounts. The buildah runs themselves are `make image-smoke`."""

from __future__ import annotations

from pathlib import Path

from deploy.images import smoke

PORTS = [18000, 18001, 18002, 19000]


def specs():
    return smoke.container_specs(smoke.pod_spec(smoke.smoke_values(PORTS)))


def test_containers_are_the_charts_cpu_pod_with_its_gateway_sidecar():
    containers = specs()
    assert set(containers) == {"triton", "gateway"}
    triton, gateway = containers["triton"], containers["gateway"]
    assert triton.user == gateway.user == "1000:1000"  # the chart's securityContext
    assert triton.read_only_root and gateway.read_only_root
    assert triton.ports == {"grpc": 18001, "metrics": 18002}  # HTTP: loopback only, not a container port
    assert gateway.ports == {"gateway": 19000}
    assert triton.env["DEVICE"] == "cpu" and triton.env["TRITON_HTTP_PORT"] == "18000"
    assert triton.env["MODEL_PATH"] == f"/models/{smoke.EMBEDDING_CHECKPOINT}"
    assert triton.env["RERANKER_MODEL_PATH"] == f"/models/{smoke.RERANKER_CHECKPOINT}"
    assert gateway.env["TRITON_GRPC_URL"] == "localhost:18001"  # sidecar: the pod's own Triton
    assert {(m.path, m.read_only, m.kind) for m in triton.mounts} == {
        ("/dev/shm", False, "memory"),
        ("/tmp", False, "disk"),
        ("/models", True, "models"),  # a claim holds the weights: read-only
    }
    assert [(m.path, m.read_only) for m in gateway.mounts] == [("/models", True)]


def test_run_command_is_buildah_chroot_with_the_containers_user_env_and_mounts():
    triton = specs()["triton"]
    sources = {"/dev/shm": Path("/dev/shm/s"), "/tmp": Path("/var/tmp/t"), "/models": Path("/m")}
    argv = smoke.run_command("ctr", triton, ["python", "-m", "deploy.serve"], sources)
    assert argv[:6] == ["buildah", "run", "--isolation", "chroot", "--user", "1000:1000"]
    assert argv[-5:] == ["ctr", "--", "python", "-m", "deploy.serve"]
    assert "DEVICE=cpu" in argv and argv[argv.index("DEVICE=cpu") - 1] == "--env"
    volumes = [argv[i + 1] for i, word in enumerate(argv) if word == "--volume"]
    assert volumes == ["/dev/shm/s:/dev/shm:rw", "/var/tmp/t:/tmp:rw", "/m:/models:ro"]


def test_writes_outside_the_writable_mounts_are_reported():
    triton = specs()["triton"]
    changed = [
        "tmp/qwen3vl/config.pbtxt",
        "dev/shm/triton_python_backend_shm_region_1",
        "etc/hosts",  # buildah's
        "opt/qwen3vl/deploy/__pycache__/serve.cpython-311.pyc",
    ]
    assert smoke.unexpected_writes(changed, triton) == [
        "opt/qwen3vl/deploy/__pycache__/serve.cpython-311.pyc"
    ]
    gateway = specs()["gateway"]
    # The gateway declares no writable mount at all: /tmp is part of its read-only root.
    assert smoke.unexpected_writes(["tmp/x", "etc/resolv.conf"], gateway) == ["tmp/x"]


def test_failures_name_every_broken_promise():
    good = {
        "server_stop": {"exit_code": 0, "processes_left": 0},
        "gateway_stop": {"exit_code": 0, "processes_left": 0},
        "server_writes": {"not_owned_by_pod_user": [], "outside_writable_mounts": []},
        "gateway_writes": {"not_owned_by_pod_user": [], "outside_writable_mounts": []},
    }
    assert smoke.failures(good) == []
    bad = {
        **good,
        "server_stop": {"exit_code": None, "processes_left": 2},
        "gateway_writes": {"not_owned_by_pod_user": ["/tmp/x"], "outside_writable_mounts": ["opt/y"]},
    }
    assert len(smoke.failures(bad)) == 4
    # A run without a gateway (the Ascend-python smoke) is judged on its server alone.
    assert smoke.failures({"server_stop": good["server_stop"], "server_writes": good["server_writes"]}) == []


def test_ascend_python_smoke_starts_the_charts_ascend_container():
    values = smoke.smoke_values(PORTS, variant=smoke.Variant("2b", "ascend"))
    containers = smoke.container_specs(smoke.pod_spec(values))
    assert set(containers) == {"triton"}
    triton = containers["triton"]
    assert triton.env["DEVICE"] == "npu" and triton.env["TASK_QUEUE_ENABLE"] == "1"
    # The driver paths the chart mounts from the host, read-only.
    assert {m.path for m in triton.mounts if m.read_only} >= {"/models", "/usr/local/Ascend/driver"}


def test_ascend_python_runs_must_stop_by_themselves_at_canns_boundary():
    writes = {"not_owned_by_pod_user": [], "outside_writable_mounts": []}
    preprocess = ["qwen3_vl_embedding_preprocess", "qwen3_vl_reranker_preprocess"]
    refused = {"exit_code": 2, "processes_left": 0, "preprocess_loaded": [], "writes": writes}
    partial = {"exit_code": 1, "processes_left": 0, "preprocess_loaded": preprocess, "writes": writes}
    assert smoke.failures({"chart_env": refused, "cpu_no_autoload": partial}) == []
    assert smoke.failures({"chart_env": {**refused, "exit_code": None}, "cpu_no_autoload": partial})
    assert smoke.failures({"chart_env": refused, "cpu_no_autoload": {**partial, "preprocess_loaded": []}})


def test_python_errors_leave_out_buildahs_exit_line():
    log = 'x "ImportError: libhccl.so: cannot open\\nAt:" y\nError: exit status 1\n'
    assert smoke.python_errors(log) == ["ImportError: libhccl.so: cannot open"]


def test_read_only_root_command_mounts_the_root_read_only_before_the_volumes():
    triton = specs()["triton"]
    sources = {"/dev/shm": Path("/dev/shm/s"), "/tmp": Path("/var/tmp/t"), "/models": Path("/m")}
    argv = smoke.read_only_root_command(
        Path("/merged"),
        Path("/var/tmp/ro"),
        triton,
        ["python", "-m", "deploy.serve"],
        sources,
        ["PATH=/opt/venv/bin:/usr/bin", "HOME=/tmp"],
        "/opt/qwen3vl",
    )
    assert argv[:4] == ["unshare", "--mount", "sh", "-c"]
    lines = argv[4].splitlines()
    read_only = lines.index("mount -o remount,bind,ro /var/tmp/ro")
    assert lines.index("mkdir -p /merged/models") < read_only  # mount points made first
    assert read_only < lines.index("mount --bind /var/tmp/t /var/tmp/ro/tmp")
    assert "mount -o remount,bind,ro /var/tmp/ro/models" in lines  # the claim stays read-only
    assert "mount -o remount,bind,ro /var/tmp/ro/tmp" not in lines
    run = lines[-1]
    assert run.startswith(
        "exec chroot --userspec=1000:1000 /var/tmp/ro /usr/bin/env -i PATH=/opt/venv/bin:/usr/bin"
    )
    # The container's environment after the image's: the chart's values win.
    assert run.index("HOME=/tmp") < run.index("DEVICE=cpu")
    assert run.endswith("/opt/qwen3vl python -m deploy.serve")


def test_failures_of_the_read_only_run_are_reported_too():
    broken = {"server_stop": {"exit_code": 1, "processes_left": 0}}
    assert smoke.failures({"read_only_root": broken}) == [
        "read-only root: server: exit status 1 after SIGTERM"
    ]
