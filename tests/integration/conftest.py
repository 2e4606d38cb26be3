"""A real tritonserver on free ports, serving the project's model_repository/ with the tiny checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

from backend.settings import SERVER_ENV_VARIABLES
from tests.conftest import REPO
from tests.integration.gateway_process import gateway, sdk  # noqa: F401 - fixtures of the gateway tests


@pytest.fixture(scope="session")
def server(tiny_model_path, tiny_reranker_path, tmp_path_factory):
    from perf.lib.servers import environment
    from tools.triton_server import TritonServer

    log = tmp_path_factory.mktemp("triton") / "server.log"
    try:
        # Deployment overrides set in the caller's shell would change what the tests check: unset them.
        with (
            environment(dict.fromkeys(SERVER_ENV_VARIABLES)),
            TritonServer(REPO / "model_repository", log_path=log) as running,
        ):
            yield running
    finally:
        print(f"server log: {log}")


@pytest.fixture(scope="session")
def official(tiny_model_path):
    from tests.reference import OfficialEmbedder

    return OfficialEmbedder(tiny_model_path)


@pytest.fixture
def http_client(server):
    import tritonclient.http as http

    client = http.InferenceServerClient(server.http_url, concurrency=16, network_timeout=120)
    yield client
    client.close()


@pytest.fixture
def grpc_client(server):
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


def embedding_inputs(module, rows: list[dict]):
    """Public-contract tensors for rows of {text, images, videos, instruction, dimensions}."""
    inputs = []

    def add(name, array, datatype):
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)

    if any("text" in row for row in rows):
        texts = [row.get("text", "") for row in rows]
        add(
            "TEXT",
            np.array([[t.encode() if isinstance(t, str) else t] for t in texts], dtype=object),
            "BYTES",
        )
    for key, name in (("images", "IMAGE"), ("videos", "VIDEO")):
        if any(row.get(key) for row in rows):
            width = max(len(row.get(key, ())) for row in rows)
            blobs = np.full((len(rows), width), b"", dtype=object)
            for index, row in enumerate(rows):
                for slot, blob in enumerate(row.get(key, ())):
                    blobs[index, slot] = blob
            add(name, blobs, "BYTES")
    if any("instruction" in row for row in rows):
        add(
            "INSTRUCTION",
            np.array([[row.get("instruction", "").encode()] for row in rows], dtype=object),
            "BYTES",
        )
    if any("dimensions" in row for row in rows):
        add("DIMENSIONS", np.array([[row.get("dimensions", 0)] for row in rows], dtype=np.int32), "INT32")
    return inputs


def embed_async(client, rows: list[dict]):
    """Start a request on an HTTP client (its pool sends up to `concurrency` at once); `.get_result()`
    waits. tritonclient's HTTP client is gevent-based and must not be shared between threads."""
    import tritonclient.http as http

    return client.async_infer("qwen3_vl_embedding", embedding_inputs(http, rows))


def embed(client, module, rows: list[dict]) -> np.ndarray:
    result = client.infer("qwen3_vl_embedding", embedding_inputs(module, rows))
    return result.as_numpy("EMBEDDING")


def rerank_inputs(module, query: dict, documents: list[dict], instruction: str | None = None):
    """Reranker tensors: the query repeated on every row, one document per row."""
    rows = [{"QUERY": query, "DOCUMENT": document} for document in documents]
    inputs = []

    def add(name, array, datatype):
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)

    for side in ("QUERY", "DOCUMENT"):
        if any("text" in row[side] for row in rows):
            texts = [row[side].get("text", "") for row in rows]
            add(
                f"{side}_TEXT",
                np.array([[t.encode() if isinstance(t, str) else t] for t in texts], dtype=object),
                "BYTES",
            )
        for key, name in (("images", "IMAGE"), ("videos", "VIDEO")):
            if any(row[side].get(key) for row in rows):
                width = max(len(row[side].get(key, ())) for row in rows)
                blobs = np.full((len(rows), width), b"", dtype=object)
                for index, row in enumerate(rows):
                    for slot, blob in enumerate(row[side].get(key, ())):
                        blobs[index, slot] = blob
                add(f"{side}_{name}", blobs, "BYTES")
    if instruction is not None:
        add("INSTRUCTION", np.array([[instruction.encode()]] * len(rows), dtype=object), "BYTES")
    return inputs


def rerank(client, module, query: dict, documents: list[dict], instruction: str | None = None) -> np.ndarray:
    result = client.infer("qwen3_vl_reranker", rerank_inputs(module, query, documents, instruction))
    return result.as_numpy("SCORE")[:, 0]


def settled_stats(client, model: str, at_least: int = 0, timeout: float = 10.0) -> dict:
    """The model's statistics once Triton has recorded everything sent so far: it counts an execution
    after the responses have gone out, so a client can see its last answer before the counts move.
    Waits for `inference_count >= at_least` and for two reads 0.2 s apart to agree."""
    import time

    deadline = time.monotonic() + timeout
    previous = None
    while True:
        stats = client.get_inference_statistics(model)["model_stats"][0]
        counts = (int(stats["inference_count"]), int(stats["execution_count"]))
        if (counts == previous and counts[0] >= at_least) or time.monotonic() > deadline:
            return stats
        previous = counts
        time.sleep(0.2)
