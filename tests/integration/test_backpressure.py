"""The model step's queue bound in a real server (backend.backpressure): with room for one waiting request
per preprocess instance, a burst is partly refused with UNAVAILABLE at the preprocess step, every request
is answered, the admitted ones are exact, and the server serves normally once the burst is over."""

from __future__ import annotations

import asyncio

import numpy as np

from perf.lib.servers import start_server
from perf.lib.variants import variant_repository, with_parameter

BURST = 64
TEXT = "The quick brown fox jumps over the lazy dog while the river runs past the old mill. " * 20


async def _burst(url: str) -> list[np.ndarray | Exception]:
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(url)

    async def one(index: int) -> np.ndarray | Exception:
        tensor = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[f"{index % 4}. {TEXT}".encode()]], dtype=object))
        try:
            result = await client.infer("qwen3_vl_embedding", [tensor], client_timeout=120)
        except Exception as error:  # the answer under test
            return error
        return result.as_numpy("EMBEDDING")[0]

    try:
        return await asyncio.gather(*(one(index) for index in range(BURST)))
    finally:
        await client.close()


def test_a_full_model_queue_is_refused_at_the_preprocess_step(tmp_path, tiny_model_path):
    repository = variant_repository(
        tmp_path / "repository", {"qwen3_vl_embedding_preprocess": with_parameter("max_model_queue", "1")}
    )
    endpoint = start_server("backpressure", tiny_model_path, tmp_path / "server.log", repository=repository)
    try:
        answers = asyncio.run(_burst(endpoint.grpc))
        refused = [answer for answer in answers if isinstance(answer, Exception)]
        served = {index: answer for index, answer in enumerate(answers) if not isinstance(answer, Exception)}
        assert refused and served, (len(refused), len(served))
        for error in refused:
            assert "UNAVAILABLE" in str(error.status()), error
            assert "the model step is overloaded" in error.message(), error
        # Once the burst is over, one request at a time is served, and what was admitted was exact.
        alone = asyncio.run(_one_at_a_time(endpoint.grpc))
        for index, vector in served.items():
            assert np.max(np.abs(vector - alone[index % 4])) <= 1e-6
    finally:
        endpoint.stop()


async def _one_at_a_time(url: str) -> list[np.ndarray]:
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(url)
    vectors = []
    try:
        for index in range(4):
            tensor = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[f"{index}. {TEXT}".encode()]], dtype=object))
            vectors.append((await client.infer("qwen3_vl_embedding", [tensor])).as_numpy("EMBEDDING")[0])
    finally:
        await client.close()
    return vectors
