"""The container images (deploy/images/*.Dockerfile), linted without Docker, and their entrypoint
(deploy.serve), run for real on the project's model repository."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from deploy import serve
from tests.conftest import REPO

IMAGES = REPO / "deploy" / "images"
DOCKERFILES = sorted(IMAGES.glob("*.Dockerfile"))


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonical(name)] = version
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", re.sub(r"\[.*\]", "", name)).lower().strip()


def package_list(path: Path) -> list[str]:
    return [
        line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]


def stages(text: str) -> list[str]:
    return re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)


def arg_defaults(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.MULTILINE))


def test_the_four_images_exist():
    assert {p.name for p in DOCKERFILES} == {f"{n}.Dockerfile" for n in ("cuda", "ascend", "cpu", "gateway")}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.stem)
def test_base_images_are_pinned_and_builds_are_multi_stage(dockerfile):
    text = dockerfile.read_text()
    defaults = arg_defaults(text)
    bases = stages(text)
    assert len(bases) >= 2, "multi-stage: build tools and pip caches stay out of the final image"
    for base in bases:
        image = defaults.get(base.strip("${}"), base) if base.startswith("$") else base
        if image in {"build"}:
            continue
        name, _, tag = image.rpartition(":")
        assert name and tag, f"{image}: no tag"
        assert tag != "latest" and "latest" not in tag
        # A release number in the tag (26.05, 3.11.11, 9.1.0), not a moving name like "slim" or "py3" alone.
        assert re.search(r"\d+\.\d+", tag), f"{image}: tag {tag!r} names no release"
    assert "latest" not in text.lower()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.stem)
def test_final_stage_runs_as_non_root_without_weights(dockerfile):
    text = dockerfile.read_text()
    final = text[text.rindex("\nFROM ") :]
    users = re.findall(r"^USER\s+(\S+)", final, re.MULTILINE)
    assert users and not users[-1].startswith(("0", "root"))
    assert "ENTRYPOINT" in final
    # Weights are mounted or fetched by the chart's init container, never baked in.
    assert not re.search(r"^(COPY|ADD)\s+\S*models?/", final, re.MULTILINE)
    assert "hf download" not in text and "huggingface-cli" not in text


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.stem)
def test_pip_installs_take_their_versions_from_requirements_txt(dockerfile):
    """Every pip install is torch at requirements.txt's version (read from it), a line taken from it, a
    package list constrained by it (-c constraints.txt, made from it), the project itself, or torch-npu
    pinned to torch's version; nothing is installed unpinned."""
    text = dockerfile.read_text().replace("\\\n", " ")
    pins = requirement_pins()
    installs = re.findall(r"pip install ([^&\n]+)", text)
    assert installs
    for install in installs:
        words = install.split()
        if "-r" in words:
            assert "-c constraints.txt" in install, install
            listed = package_list(REPO / words[words.index("-r") + 1])
            missing = [name for name in listed if canonical(name) not in pins]
            assert not missing, f"{dockerfile.name}: {missing} are not pinned in requirements.txt"
        elif '"torch==${TORCH}"' in install:
            assert "TORCH=\"$(sed -n 's/^torch==//p' requirements.txt)\"" in text
        elif words == ["--no-deps", "."]:
            pass
        else:
            pytest.fail(
                f"{dockerfile.name}: pip install {install} does not take its versions from requirements.txt"
            )
    for quoted in re.findall(r'"\$\(grep \'\^([\w-]+)==\' requirements.txt\)"', text):
        assert canonical(quoted) in pins


CONSTRAINTS_COMMAND = "sed 's/\\[[^]]*\\]//' requirements.txt > constraints.txt"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.stem)
def test_constraints_are_requirements_txt_without_extras(dockerfile, tmp_path):
    # pip rejects extras in a constraints file ("Constraints cannot have extras"): requirements.txt's
    # tritonclient[http,grpc] line would fail every image build if passed with -c as it is.
    assert CONSTRAINTS_COMMAND in dockerfile.read_text()
    (tmp_path / "requirements.txt").write_text((REPO / "requirements.txt").read_text())
    subprocess.run(["sh", "-c", CONSTRAINTS_COMMAND], cwd=tmp_path, check=True)
    text = (tmp_path / "constraints.txt").read_text()
    lines = [line.split("#")[0].strip() for line in text.splitlines() if "==" in line.split("#")[0]]
    assert not any("[" in line for line in lines)
    assert {canonical(n): v for n, _, v in (line.partition("==") for line in lines)} == requirement_pins()


def test_ascend_torch_npu_matches_torch():
    text = (IMAGES / "ascend.Dockerfile").read_text()
    npu = arg_defaults(text)["TORCH_NPU_VERSION"]
    # torch-npu X.Y.Z[.postN] requires torch X.Y.Z.
    assert re.sub(r"\.post\d+$", "", npu) == requirement_pins()["torch"]


def imported_modules(*folders: Path) -> set[str]:
    names = set()
    for folder in folders:
        for path in folder.rglob("*.py"):
            names.update(re.findall(r"^\s*(?:from|import)\s+(\w+)", path.read_text(), re.MULTILINE))
    return names


def test_serving_images_install_every_runtime_dependency_the_backend_imports():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    modules = {"pillow": "PIL", "huggingface-hub": "huggingface_hub"}
    imported = imported_modules(REPO / "backend", REPO / "model_repository")
    needed = set()
    for dependency in project["dependencies"]:
        name = canonical(re.split(r"[<>=!;\s\[]", dependency)[0])
        if modules.get(name, name.replace("-", "_")) in imported:
            needed.add(name)
    assert {"transformers", "numpy", "pillow", "av"} <= needed  # the scan found the backend's imports
    installed = {canonical(name) for name in package_list(IMAGES / "serve-packages.txt")}
    assert needed <= installed, needed - installed


@pytest.mark.parametrize("name", ["cpu", "cuda", "ascend"])
def test_server_images_launcher_imports_with_only_what_they_copy(name, tmp_path):
    """The server images copy backend/, tools/ and client/ (the gateway has an image of its own), build with
    `python -m tools.launcher prepare` and serve with `--no-gateway`: the launcher must import without
    gateway/ (it did not, for a while after the launcher split)."""
    copied = set(re.findall(r"^COPY (?!--)(\S+) \S+$", (IMAGES / f"{name}.Dockerfile").read_text(), re.M))
    assert {"backend", "tools", "client"} <= copied and "gateway" not in copied
    for folder in ("backend", "tools", "deploy"):
        (tmp_path / folder).symlink_to(REPO / folder)
    probe = "import tools.launcher, deploy.serve; tools.launcher._build_parser().parse_args(['prepare'])"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; sys.modules['gateway'] = None; sys.path.insert(0, {str(tmp_path)!r}); {probe}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert result.returncode == 0, result.stderr


# Distribution that provides each third-party module the gateway imports (pip names).
GATEWAY_MODULES = {
    "fastapi": "fastapi",
    "starlette": "fastapi",
    "pydantic": "pydantic",
    "pydantic_core": "pydantic",
    "uvicorn": "uvicorn",
    "prometheus_client": "prometheus-client",
    "tokenizers": "tokenizers",
    "numpy": "numpy",
    "tritonclient": "tritonclient",
    "aiohttp": "tritonclient",  # tritonclient[http]'s dependency
    "grpc": "tritonclient",  # tritonclient[grpc]'s dependencies (grpcio, protobuf): the KServe REST front
    "google": "tritonclient",
}
# Modules whose import needs a package their own distribution does not bring.
GATEWAY_SUBMODULE_PACKAGES = {"uvicorn.protocols.http.httptools_impl": "httptools"}


def test_gateway_image_installs_what_the_gateway_imports_and_no_torch():
    import importlib.util

    installed = {canonical(name) for name in package_list(IMAGES / "gateway-packages.txt")}
    assert "torch" not in installed and "tritonclient[http,grpc]" in package_list(
        IMAGES / "gateway-packages.txt"
    )
    # The client library is copied in beside the gateway (python -m gateway runs from /opt/qwen3vl).
    dockerfile = (IMAGES / "gateway.Dockerfile").read_text()
    assert "COPY client/qwen3vl_client /opt/qwen3vl/qwen3vl_client" in dockerfile
    assert "WORKDIR /opt/qwen3vl" in dockerfile[dockerfile.rindex("\nFROM ") :]
    copied = {"gateway", "backend", "qwen3vl_client", "__future__"}
    for module in sorted(imported_modules(REPO / "gateway") - copied):
        if module in sys.stdlib_module_names or importlib.util.find_spec(module) is None:
            continue  # standard library, or a word from a docstring
        assert module in GATEWAY_MODULES, f"gateway imports {module}: add its package to gateway-packages.txt"
        assert GATEWAY_MODULES[module] in installed, module
    sources = "\n".join(path.read_text() for path in (REPO / "gateway").glob("*.py"))
    for submodule, package in GATEWAY_SUBMODULE_PACKAGES.items():
        if re.search(rf"^\s*(from|import) {re.escape(submodule)}\b", sources, re.M):
            assert package in installed, f"gateway imports {submodule}: add {package} to gateway-packages.txt"


def test_cuda_image_is_a_triton_release_with_iterative_json_parsing():
    # triton-inference-server/common PR #156 (iterative JSON parsing) is in r26.05 and later, not r26.04.
    image = arg_defaults((IMAGES / "cuda.Dockerfile").read_text())["TRITON_IMAGE"]
    release = re.fullmatch(r"nvcr\.io/nvidia/tritonserver:(\d+)\.(\d+)-py3", image)
    assert release and (int(release[1]), int(release[2])) >= (26, 5)


def test_cuda_image_has_the_dynamic_batcher_fixes():
    # Dynamic-batcher starvation fixed in 2.72 (NGC 26.08), the batcher's use-after-free in 2.75 (NGC 26.11).
    image = arg_defaults((IMAGES / "cuda.Dockerfile").read_text())["TRITON_IMAGE"]
    release = re.fullmatch(r"nvcr\.io/nvidia/tritonserver:(\d+)\.(\d+)-py3", image)
    assert release and (int(release[1]), int(release[2])) >= (26, 11)


# NGC release -> the tritonserver it ships, for the releases the CUDA image has been pinned to.
NGC_TRITON = {"26.11": "2.75"}
# The wheel-based images' server: nvidia-pytriton 0.7.0 ships tritonserver 2.51.
PYTRITON_TRITON = {"0.7.0": "2.51"}


def test_chart_values_name_the_triton_version_each_image_runs():
    chart = REPO / "deploy" / "helm" / "qwen3-vl"
    ngc = arg_defaults((IMAGES / "cuda.Dockerfile").read_text())["TRITON_IMAGE"].split(":")[1].split("-")[0]
    wheel = PYTRITON_TRITON[requirement_pins()["nvidia-pytriton"]]
    expected = {
        "cuda": f"tritonserver {NGC_TRITON[ngc]} (NGC {ngc}",
        "cpu": f"tritonserver {wheel},",
        "ascend": f"tritonserver {wheel},",
    }
    for accelerator, phrase in expected.items():
        assert phrase in (chart / "values" / f"{accelerator}.yaml").read_text(), accelerator
    defaults = (chart / "values.yaml").read_text()
    assert (
        f"{NGC_TRITON[ngc]} in the CUDA image (NGC {ngc})" in defaults
        and f"{wheel} in the CPU and Ascend" in defaults
    )


def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_entrypoint_copies_the_chosen_pipelines_with_the_pod_instance_counts(tmp_path):
    repository = serve.prepare_repository(
        REPO / "model_repository", tmp_path / "repo", ["embedding"], model_instances=4, preprocess_instances=6
    )
    assert sorted(p.name for p in repository.iterdir()) == sorted(serve.PIPELINE_MODELS["embedding"])
    model = parse_config(repository / "qwen3_vl_embedding_model" / "config.pbtxt")
    preprocess = parse_config(repository / "qwen3_vl_embedding_preprocess" / "config.pbtxt")
    assert [g.count for g in model.instance_group] == [4]
    assert [g.count for g in preprocess.instance_group] == [6]
    # Everything else is the repository's configuration, unchanged.
    original = parse_config(REPO / "model_repository" / "qwen3_vl_embedding_model" / "config.pbtxt")
    model.instance_group[0].count = original.instance_group[0].count
    assert model == original


POD_ENV = {
    "RESPONSE_CACHE": "redis,host=redis-master,port=6379",
    "REDIS_PASSWORD": "secret",
    "TRITON_EXIT_TIMEOUT_SECS": "30",
    "TRITON_SHM_DEFAULT_BYTES": "16777216",
    "TRITON_HTTP_PORT": "8080",
    "TRITON_RUNTIME_DIR": "/opt/qwen3vl/triton-runtime",
}
POD_PASSTHROUGH = [
    "--cache-config=redis,host=redis-master",
    "--cache-config=redis,port=6379",
    "--cache-config=redis,password=secret",
    "--backend-config=python,shm-default-byte-size=16777216",
    "--log-verbose=1",
]


def launcher_args(argv: list[str]):
    """The launcher options of an entrypoint argv, parsed by the launcher's own parser (so each is one it
    accepts), and what goes on to tritonserver."""
    from tools.launcher import _build_parser

    assert argv[:3] == [sys.executable, "-m", "tools.launcher"]
    cut = argv.index("--")
    return _build_parser().parse_args(argv[3:cut]), argv[cut + 1 :]


def test_entrypoint_serves_the_wheel_under_the_launcher(tmp_path):
    """CPU and Ascend images: the wheel's server, from the runtime directory the image prepared."""
    argv = serve.command(POD_ENV, ["--log-verbose=1"], tmp_path, ngc_server=tmp_path / "no-such-tritonserver")
    parsed, passthrough = launcher_args(argv)
    assert parsed.command == "serve" and parsed.tritonserver is None and parsed.backend_directory is None
    assert parsed.runtime_dir == Path("/opt/qwen3vl/triton-runtime")
    assert parsed.model_repository == tmp_path
    assert parsed.http_port == 8080 and parsed.grpc_port == 8001 and parsed.metrics_port == 8002
    assert parsed.exit_timeout_secs == 30
    assert parsed.host == "0.0.0.0"  # a pod is reached from outside
    assert parsed.http_host == "127.0.0.1"  # ... but never at tritonserver 2.51's HTTP parser (issue 19)
    assert parsed.no_gateway  # the gateway runs in a container of its own
    assert not parsed.no_watchdog and parsed.liveness_timeout is None  # supervision as under make serve
    assert passthrough == POD_PASSTHROUGH


def test_entrypoint_serves_ngc_tritonserver_under_the_launcher(tmp_path):
    """CUDA image: NGC's own server, given to the launcher, so that it gets the same supervision (restarts,
    stub watchdog, explicit model control, liveness) instead of being exec'd bare."""
    ngc = tmp_path / "opt" / "tritonserver" / "bin" / "tritonserver"
    ngc.parent.mkdir(parents=True)
    ngc.write_text("#!/bin/sh\n")
    env = {**POD_ENV, "TRITON_HOST": "10.0.0.5"}
    argv = serve.command(env, ["--log-verbose=1"], tmp_path / "repo", ngc_server=ngc)
    parsed, passthrough = launcher_args(argv)
    assert parsed.command == "serve"
    assert parsed.tritonserver == ngc
    assert parsed.backend_directory == tmp_path / "opt" / "tritonserver" / "backends"
    assert parsed.cache_directory is None  # NGC's own default, /opt/tritonserver/caches (redis included)
    assert parsed.runtime_dir is None  # nothing of the wheel is prepared
    assert parsed.model_repository == tmp_path / "repo"
    assert parsed.http_port == 8080 and parsed.exit_timeout_secs == 30 and parsed.host == "10.0.0.5"
    assert parsed.http_host == "127.0.0.1"  # one REST door in every image: the gateway
    assert parsed.no_gateway and not parsed.no_watchdog
    assert passthrough == POD_PASSTHROUGH
    # The real default is NGC's path, used when the image has it.
    assert serve.NGC_TRITONSERVER == Path("/opt/tritonserver/bin/tritonserver")


def test_triton_http_binds_loopback_unless_asked(tmp_path):
    """Triton's HTTP binds 127.0.0.1 whatever TRITON_HOST says; TRITON_HTTP_HOST (the KServe runtime's
    CUDA image, Triton 2.75) opens it."""
    from tools.triton_command import server_command

    argv = server_command(tmp_path, ["tritonserver"], 1, 2, 3, host="0.0.0.0")
    assert "--http-address=127.0.0.1" in argv
    assert {"--grpc-address=0.0.0.0", "--metrics-address=0.0.0.0"} <= set(argv)
    parsed, _ = launcher_args(serve.command({**POD_ENV, "TRITON_HTTP_HOST": "0.0.0.0"}, [], tmp_path))
    assert parsed.http_host == "0.0.0.0"


def test_installed_server_runs_as_installed_with_the_venv_first_on_path(tmp_path):
    """What the launcher makes of --tritonserver: that binary with only the directories given, the options
    supervision needs (explicit model control, shm prefix), and an environment that adds only the venv."""
    from tools.triton_command import server_command
    from tools.triton_install import InstalledServer

    installed = InstalledServer(
        Path("/opt/tritonserver/bin/tritonserver"), Path("/opt/tritonserver/backends")
    )
    argv = server_command(tmp_path, installed.command(), 1, 2, 3, ["--log-verbose=1"], shm_prefix="p_")
    assert argv[:2] == [
        "/opt/tritonserver/bin/tritonserver",
        "--backend-directory=/opt/tritonserver/backends",
    ]
    assert not any(arg.startswith("--cache-directory") for arg in argv)
    assert {"--model-control-mode=explicit", "--load-model=*", "--disable-auto-complete-config"} <= set(argv)
    assert "--backend-config=python,shm-region-prefix-name=p_" in argv and argv[-1] == "--log-verbose=1"
    env = installed.env(tmp_path / "venv")
    assert env["PATH"].split(os.pathsep)[0] == str(tmp_path / "venv" / "bin")
    assert env.get("LD_LIBRARY_PATH") == os.environ.get("LD_LIBRARY_PATH")  # the image's own libraries


def test_entrypoint_environment_helpers():
    assert serve.server_args({}) == []
    assert serve.cache_args({"RESPONSE_CACHE": "local,size=1024"}) == ["--cache-config=local,size=1024"]
    with pytest.raises(ValueError):
        serve.cache_args({"RESPONSE_CACHE": "local"})
    with pytest.raises(ValueError):
        serve.parse_pipelines("embedding,vision")
