"""The container images' entrypoint (python -m deploy.serve) run as the CPU and Ascend images run it, minus
Docker: the pod's environment picks the pipeline, the instance counts and the response cache, and the
wheel's tritonserver comes up through tools.launcher and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from backend.settings import SERVER_ENV_VARIABLES
from tests.conftest import REPO
from tools.ports import free_ports

pytestmark = pytest.mark.server


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def entrypoint(tiny_model_path, tmp_path_factory):
    http, grpc, metrics = free_ports(3)
    env = {key: value for key, value in os.environ.items() if key not in SERVER_ENV_VARIABLES}
    env.update(
        PIPELINES="embedding",
        MODEL_INSTANCES="1",
        PREPROCESS_INSTANCES="3",
        RESPONSE_CACHE="local,size=16777216",
        TRITON_EXIT_TIMEOUT_SECS="5",
        TRITON_SHM_DEFAULT_BYTES="16777216",
        TRITON_HTTP_PORT=str(http),
        TRITON_GRPC_PORT=str(grpc),
        TRITON_METRICS_PORT=str(metrics),
        TRITON_HOST="127.0.0.1",
        SERVE_DIR=str(tmp_path_factory.mktemp("serve")),
    )
    log = tmp_path_factory.mktemp("entrypoint") / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "deploy.serve"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + 240
    while not ready(http):
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"entrypoint did not become ready:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    yield process, http, log
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_serves_only_the_chosen_pipeline_with_the_pod_counts_and_cache(entrypoint):
    import tritonclient.http as httpclient

    _, http, _ = entrypoint
    client = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
    try:
        models = {m["name"]: m.get("state") for m in client.get_model_repository_index()}
        assert set(models) == {
            "qwen3_vl_embedding",
            "qwen3_vl_embedding_preprocess",
            "qwen3_vl_embedding_model",
        }
        config = client.get_model_config("qwen3_vl_embedding_preprocess")
        assert config["instance_group"][0]["count"] == 3

        tensor = httpclient.InferInput("TEXT", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[b"served from the image entrypoint"]], dtype=object))
        first = client.infer("qwen3_vl_embedding", [tensor]).as_numpy("EMBEDDING")
        second = client.infer("qwen3_vl_embedding", [tensor]).as_numpy("EMBEDDING")
        np.testing.assert_array_equal(first, second)
        stats = client.get_inference_statistics("qwen3_vl_embedding")["model_stats"][0]["inference_stats"]
        assert int(stats["cache_hit"]["count"]) == 1
    finally:
        client.close()


def test_sigterm_stops_the_server_cleanly(entrypoint):
    process, http, log = entrypoint
    os.kill(process.pid, signal.SIGTERM)  # what the kubelet sends
    assert process.wait(timeout=60) == 0, log.read_text()[-3000:]
    assert not ready(http)
