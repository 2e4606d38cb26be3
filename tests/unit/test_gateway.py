"""Gateway pieces that need no server: settings, request parsing into rows, error mapping, admission."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time

import pytest

from gateway.admission import Admission
from gateway.errors import GatewayError, Kind
from gateway.items import Item, input_items, split_instruct_query
from gateway.protocol import EmbeddingRequest, RerankRequest, ScoreRequest
from gateway.settings import ENVIRONMENT, GatewaySettings, settings_from_env
from gateway.triton_errors import blame
from tests.conftest import REPO


def test_the_gateway_never_imports_torch():
    code = (
        "import sys, gateway.app, gateway.__main__, gateway.serving; "
        "sys.exit(1 if 'torch' in sys.modules or 'transformers' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_the_gateway_imports_nothing_from_backend():
    # DESIGN: gateway -> client only; imports inside functions count too (the tokenizer fallback had one).
    importing = re.compile(r"^\s*(from|import)\s+backend\b", re.MULTILINE)
    offenders = [path.name for path in (REPO / "gateway").glob("*.py") if importing.search(path.read_text())]
    assert offenders == []


def test_the_default_tokenizer_is_the_checkpoint_the_backend_runs_by_default():
    from backend.settings import DEFAULT_EMBEDDING_MODEL
    from gateway.settings import DEFAULT_TOKENIZER_PATH

    assert DEFAULT_TOKENIZER_PATH == DEFAULT_EMBEDDING_MODEL
    assert (DEFAULT_TOKENIZER_PATH / "tokenizer.json").is_file()


def test_settings_come_from_the_environment():
    settings = settings_from_env(
        {
            "GATEWAY_PORT": "9100",
            "SERVED_MODEL_NAME": "Qwen/Qwen3-VL-Embedding-8B, qwen3_vl_embedding",
            "GATEWAY_ALLOW_URL_FETCH": "yes",
            "GATEWAY_QUEUE_TIMEOUT": "2.5",
            "TRITON_GRPC_PORT": "8101",
            "MODEL_PATH": "/models/x",
            "GATEWAY_API_KEY": "",
        }
    )
    assert settings.port == 9100
    assert settings.served_model_names == ("Qwen/Qwen3-VL-Embedding-8B", "qwen3_vl_embedding")
    assert settings.model_name == "Qwen/Qwen3-VL-Embedding-8B"
    assert settings.allow_url_fetch is True
    assert settings.queue_timeout == 2.5
    assert settings.triton_grpc_url == "127.0.0.1:8101"
    assert settings.tokenizer_path == "/models/x"
    assert settings.api_key is None  # empty = unset
    defaults = settings_from_env({})
    assert (defaults.host, defaults.port, defaults.allow_url_fetch) == ("127.0.0.1", 9000, False)


@pytest.mark.parametrize(
    "environ",
    [{"GATEWAY_INPUT_FORMAT": "raw"}, {"GATEWAY_ALLOW_URL_FETCH": "maybe"}, {"GATEWAY_MAX_IN_FLIGHT": "0"}],
)
def test_bad_settings_are_refused(environ):
    with pytest.raises(ValueError):
        settings_from_env(environ)


def test_every_setting_has_a_variable_and_the_docs_list_it():
    fields = {field for field in GatewaySettings.__dataclass_fields__}
    assert fields == set(ENVIRONMENT)
    page = (REPO / "docs" / "configuration.md").read_text()
    missing = [variable for variable in ENVIRONMENT.values() if f"`{variable}`" not in page]
    assert not missing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Instruct: Find passages\nQuery: What is X?", ("Find passages", "What is X?")),
        ("Instruct:Find\nQuery:two\nlines", ("Find", "two\nlines")),
        ("Instruct: \nQuery: bare", (None, "bare")),
        ("What is X?", (None, "What is X?")),
        ("Query: no instruct", (None, "Query: no instruct")),
    ],
)
def test_instruct_query_strings_split_into_instruction_and_text(text, expected):
    assert split_instruct_query(text) == expected


def test_input_strings_become_official_rows_and_token_ids_need_the_vllm_format():
    request = EmbeddingRequest(input=["doc", "Instruct: task\nQuery: q"], instruction="default task")
    assert input_items(request, "official") == [
        Item(text="doc", instruction="default task"),
        Item(text="q", instruction="task"),
    ]
    assert input_items(EmbeddingRequest(input="Instruct: t\nQuery: q"), "vllm") == [
        Item(text="Instruct: t\nQuery: q", raw=True)
    ]
    tokens = EmbeddingRequest(input=[[1, 2], [3]])
    assert input_items(tokens, "vllm") == [Item(raw=True, token_ids=(1, 2)), Item(raw=True, token_ids=(3,))]
    assert input_items(EmbeddingRequest(input=[5, 6]), "vllm") == [Item(raw=True, token_ids=(5, 6))]
    with pytest.raises(GatewayError, match=r"input\[0\] is a list of token ids") as refused:
        input_items(tokens, "official")
    assert refused.value.kind is Kind.INVALID


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"input": "a", "messages": [{"role": "user", "content": "b"}]},
        {"input": "a", "normalize": True},
        {"input": "a", "encoding_format": "hex"},
        {"input": ["a", 1]},
        {"messages": [{"role": "user", "content": [{"type": "text", "image_url": {"url": "data:,"}}]}]},
        {"messages": [{"role": "tool", "content": "x"}]},
        {"input": "a", "input_format": "other"},
    ],
)
def test_invalid_embedding_requests_are_refused_by_the_schema(body):
    with pytest.raises(ValueError):
        EmbeddingRequest.model_validate(body)


def test_unknown_fields_are_ignored_and_score_sides_pair_up():
    request = EmbeddingRequest.model_validate({"input": "a", "future_field": 1, "user": "u"})
    assert request.input == "a"
    score = ScoreRequest.model_validate({"queries": "q", "items": ["a", "b"]})
    assert score.sides() == (["q"], ["a", "b"])
    rerank = RerankRequest.model_validate(
        {"query": "q", "documents": {"content": [{"type": "text", "text": "a"}, {"image_url": "data:,x"}]}}
    )
    assert [document.content[0].kind for document in rerank.document_list()] == ["text", "image_url"]


class FakeTritonError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self._code, self._message = code, message

    def status(self):
        return self._code

    def message(self):
        return self._message


def test_triton_errors_map_to_kinds_and_name_the_callers_item():
    row_error = FakeTritonError(
        "StatusCode.INVALID_ARGUMENT", "in ensemble 'e', row 1: IMAGE[0]: not an image"
    )
    error = blame(row_error, [4, 7, 9], "input")
    assert (error.kind, error.message, error.param) == (
        Kind.INVALID,
        "input[7]: IMAGE[0]: not an image",
        "input",
    )
    query = FakeTritonError("StatusCode.INVALID_ARGUMENT", "row 0: QUERY_IMAGE[0]: bad")
    assert blame(query, [0, 1], "documents", about_query=True).message == "query: QUERY_IMAGE[0]: bad"
    assert (
        blame(FakeTritonError("StatusCode.UNAVAILABLE", "queue full"), [0], "input").kind is Kind.UNAVAILABLE
    )
    full = FakeTritonError("StatusCode.UNAVAILABLE", "Exceeds maximum queue size")
    assert blame(full, [0], "input").kind is Kind.OVERLOADED  # Triton up, its queue full: send again
    assert blame(FakeTritonError("StatusCode.DEADLINE_EXCEEDED", "late"), [0], "input").kind is Kind.TIMEOUT
    assert blame(FakeTritonError("StatusCode.INTERNAL", "boom"), [0], "input").kind is Kind.INTERNAL


def test_errors_have_vllms_shape_and_retryable_ones_a_retry_after():
    error = GatewayError(Kind.OVERLOADED, "busy", retry_after=3)
    assert error.status == 503
    assert json.loads(error.body()) == {
        "error": {"message": "busy", "type": "ServiceUnavailableError", "param": None, "code": 503}
    }
    assert error.headers(1) == {"Retry-After": "3"}
    assert GatewayError(Kind.INVALID, "x").headers(1) == {}


def test_admission_bounds_in_flight_and_serves_a_burst_in_order():
    async def scenario():
        admission = Admission(max_in_flight=2, max_waiting=100, queue_timeout=5.0)
        order, peak = [], 0

        async def request(index):
            nonlocal peak
            async with admission.slot():
                peak = max(peak, admission.in_flight)
                order.append(index)
                await asyncio.sleep(0.001)

        await asyncio.gather(*(request(index) for index in range(50)))
        return order, peak, admission

    order, peak, admission = asyncio.run(scenario())
    assert sorted(order) == list(range(50)) and order[:2] == [0, 1]
    assert peak == 2 and admission.in_flight == 0 and admission.waiting == 0


def test_admission_sheds_what_would_wait_too_long():
    async def scenario():
        admission = Admission(max_in_flight=1, max_waiting=100, queue_timeout=0.05)
        outcomes = []

        async def request():
            try:
                async with admission.slot():
                    await asyncio.sleep(0.2)
                outcomes.append("served")
            except GatewayError as error:
                outcomes.append(error.kind)

        await asyncio.gather(request(), request())
        no_room = Admission(max_in_flight=1, max_waiting=0, queue_timeout=5.0)
        async with no_room.slot():
            with pytest.raises(GatewayError, match="already waiting"):
                async with no_room.slot():
                    pass
        return outcomes, admission

    outcomes, admission = asyncio.run(scenario())
    assert sorted(map(str, outcomes)) == sorted(["served", str(Kind.OVERLOADED)])
    assert admission.in_flight == 0 and admission.waiting == 0


def test_the_docs_name_no_stale_gateway_variables():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    listed = {name for page in pages for name in re.findall(r"`(GATEWAY_[A-Z_]+)", page.read_text())}
    assert listed <= set(ENVIRONMENT.values())


def test_the_in_flight_bound_follows_the_measured_rate():
    admission = Admission(max_in_flight=256, max_waiting=100, queue_timeout=5.0, in_flight_seconds=2.0)
    assert admission.limit() == 64  # no rate yet
    now = time.monotonic()
    admission._busy_since = now - 1.0
    admission._completions.extend([now] * 100)  # 100 requests in one busy second, finished in a clump
    assert 195 <= admission.limit() <= 200
    admission._busy_since = now - 10.0
    admission._completions.clear()
    admission._completions.extend([now] * 20)  # 2 per second
    assert admission.limit() == 16  # the floor
    admission._completions.extend([now] * 10_000)
    assert admission.limit() == 256  # the cap
    assert Admission(max_in_flight=8, max_waiting=1, queue_timeout=1.0).limit() == 8  # fixed


def _receiver(*chunks: bytes, disconnect: bool = False):
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]
    if disconnect:
        messages[-1]["more_body"] = True
        messages.append({"type": "http.disconnect"})

    async def receive():
        return messages.pop(0)

    return receive


def test_the_body_is_read_from_asgi_messages_within_the_limit():
    from starlette.requests import ClientDisconnect

    from gateway.bodies import read_body

    settings = GatewaySettings(max_body_bytes=10)
    scope = {"headers": [(b"content-type", b"application/json; charset=utf-8")]}
    assert asyncio.run(read_body(scope, _receiver(b'{"a":', b"", b"1}"), settings)) == b'{"a":1}'
    assert asyncio.run(read_body(scope, _receiver(b"{}"), settings)) == b"{}"
    with pytest.raises(GatewayError) as too_large:
        asyncio.run(read_body(scope, _receiver(b"123456", b"78901"), settings))
    assert too_large.value.kind is Kind.TOO_LARGE and "limit of 10 bytes" in too_large.value.message
    declared = {"headers": [(b"content-length", b"11")]}
    with pytest.raises(GatewayError, match="limit of 10 bytes"):
        asyncio.run(read_body(declared, _receiver(b"{}"), settings))
    with pytest.raises(GatewayError, match="body is empty"):
        asyncio.run(read_body(scope, _receiver(b""), settings))
    with pytest.raises(GatewayError, match="Content-Type must be application/json"):
        asyncio.run(read_body({"headers": [(b"content-type", b"text/plain")]}, _receiver(b"{}"), settings))
    with pytest.raises(ClientDisconnect):
        asyncio.run(read_body(scope, _receiver(b"{", disconnect=True), settings))
