"""vLLM drop-in by default: served names from the weights, the ensemble name as an alias, a 404 that lists
them; Jina/Cohere document objects; schema errors without the validator's internals; integers refused, not
wrapped."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from gateway import protocol
from gateway.errors import GatewayError, Kind
from gateway.models import ModelInfo
from gateway.names import ServedNames, names_for_weights
from gateway.settings import GatewaySettings
from gateway.validation import validation_error


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("Qwen/Qwen3-VL-Embedding-8B", ("Qwen/Qwen3-VL-Embedding-8B", "Qwen3-VL-Embedding-8B")),
        (
            "/models/Qwen3-VL-Embedding-8B/",
            ("Qwen3-VL-Embedding-8B", "/models/Qwen3-VL-Embedding-8B", "Qwen/Qwen3-VL-Embedding-8B"),
        ),
        (
            "/hf/hub/models--Qwen--Qwen3-VL-Reranker-2B/snapshots/0123abc",
            (
                "Qwen/Qwen3-VL-Reranker-2B",
                "Qwen3-VL-Reranker-2B",
                "/hf/hub/models--Qwen--Qwen3-VL-Reranker-2B/snapshots/0123abc",
            ),
        ),
        ("models/qwen3-vl-embedding-tiny", ("qwen3-vl-embedding-tiny", "models/qwen3-vl-embedding-tiny")),
    ],
)
def test_served_names_are_what_vllm_would_serve_for_the_weights(path, expected):
    assert names_for_weights(path) == expected


class Backend:
    def __init__(self, model_path: str | None, up: bool = True):
        self.model_path, self.up, self.asked = model_path, up, 0

    async def info(self, model: str) -> ModelInfo:
        self.asked += 1
        if not self.up:
            raise GatewayError(Kind.UNAVAILABLE, "Triton is not ready")
        return ModelInfo(model, 8, frozenset(), frozenset(), model_path=self.model_path)


def test_names_come_from_triton_and_the_ensemble_name_stays_an_alias():
    settings = GatewaySettings()
    names = ServedNames(settings, Backend("/models/Qwen3-VL-Embedding-8B"))  # type: ignore[arg-type]

    async def run() -> None:
        embedding = [settings.embedding_model]
        assert await names.check(None, embedding) == "Qwen3-VL-Embedding-8B"
        assert await names.check("Qwen/Qwen3-VL-Embedding-8B", embedding) == "Qwen/Qwen3-VL-Embedding-8B"
        assert await names.check("qwen3_vl_embedding", embedding) == "qwen3_vl_embedding"
        with pytest.raises(GatewayError) as caught:
            await names.check("text-embedding-3-small", embedding)
        error = caught.value
        assert error.kind is Kind.NOT_FOUND and error.param == "model"
        assert error.message.startswith("The model `text-embedding-3-small` does not exist.")
        assert "`Qwen/Qwen3-VL-Embedding-8B`" in error.message and "`qwen3_vl_embedding`" in error.message
        assert "SERVED_MODEL_NAME" in error.message
        assert await names.listed(settings.embedding_model) == ("Qwen3-VL-Embedding-8B", "qwen3_vl_embedding")

    asyncio.run(run())


def test_configured_names_win_and_triton_down_is_asked_again():
    configured = ServedNames(
        GatewaySettings(served_model_names=("mine",)),
        Backend("/models/x"),  # type: ignore[arg-type]
    )
    backend = Backend(None, up=False)
    default = ServedNames(GatewaySettings(), backend)  # type: ignore[arg-type]

    async def run() -> None:
        assert await configured.of("qwen3_vl_embedding") == ("mine", "qwen3_vl_embedding")
        first = await default.of("qwen3_vl_reranker")
        assert first[0] == "qwen3-vl-reranker-tiny" and first[-1] == "qwen3_vl_reranker"
        backend.up = True
        await default.of("qwen3_vl_reranker")
        await default.of("qwen3_vl_reranker")
        assert backend.asked == 2  # not cached while Triton was down; cached once it answered

    asyncio.run(run())


def test_jina_and_cohere_document_objects_are_accepted():
    request = protocol.RerankRequest.model_validate(
        {"query": {"text": "q"}, "documents": [{"text": "a", "title": "t"}, "b"], "top_n": 1}
    )
    assert request.query == "q" and request.document_list() == ["a", "b"]
    score = protocol.ScoreRequest.model_validate({"queries": "q", "documents": [{"text": "a"}]})
    assert score.sides() == (["q"], ["a"])


def _message(schema: type, body: dict) -> GatewayError:
    with pytest.raises(ValidationError) as caught:
        schema.model_validate(body)
    return validation_error(caught.value)


@pytest.mark.parametrize(
    ("schema", "body", "message", "param"),
    [
        (protocol.EmbeddingRequest, {}, "give exactly one of input and messages", None),
        (
            protocol.EmbeddingRequest,
            {"input": [1, "a"]},
            "input: must be a string, a list of strings, a list of token ids or a list of lists of token ids",
            "input",
        ),
        (
            protocol.RerankRequest,
            {"query": "q", "documents": [{"title": "no text"}]},
            "documents[0].content: Field required",  # the object shape came furthest
            "documents",
        ),
        (
            protocol.RerankRequest,
            {"query": "q", "documents": 5},
            'documents: must be a list of strings, {"text": ...} or {"content": [parts]} objects',
            "documents",
        ),
        (
            protocol.EmbeddingRequest,
            {"messages": [{"role": "bot", "content": "x"}]},
            "messages[0].role: Input should be 'system', 'developer' or 'user'",
            "messages",
        ),
        (
            protocol.EmbeddingRequest,
            {"input": "a", "dimensions": 2**40},
            "dimensions: Input should be less than or equal to 2147483647",
            "dimensions",
        ),
        (
            protocol.RerankRequest,
            {"query": "q", "documents": ["a"], "top_n": 2**63},
            "top_n: Input should be less than or equal to 2147483647",
            "top_n",
        ),
        (
            protocol.DetokenizeRequest,
            {"tokens": [1, 2**40]},
            "tokens[1]: Input should be less than or equal to 2147483647",
            "tokens",
        ),
    ],
)
def test_schema_errors_name_the_field_without_validator_internals(schema, body, message, param):
    error = _message(schema, body)
    assert (error.message, error.param) == (message, param)
    for internal in ("Value error", "body:", "list[", "ScoreContent", "function-after", "pydantic"):
        assert internal not in error.message
