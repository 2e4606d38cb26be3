"""Bounded work per body: values counted while reading, a body deadline, C-speed parsing with the json
module's answers, per-field limits before validation, data: URIs sized before decoding and decoded at C
speed."""

from __future__ import annotations

import asyncio
import base64
import random
import urllib.parse

import pytest

from gateway import media
from gateway.bodies import parse_json, read_body, read_json
from gateway.errors import GatewayError, Kind
from gateway.items import input_items
from gateway.limits import check_limits
from gateway.protocol import EmbeddingRequest
from gateway.settings import GatewaySettings

SCOPE = {"headers": [(b"content-type", b"application/json")]}


def _receiver(*chunks: bytes, stall: float = 0.0):
    messages = [
        {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
        for index, chunk in enumerate(chunks)
    ]

    async def receive():
        if len(messages) == 1 and stall:
            await asyncio.sleep(stall)
        return messages.pop(0)

    return receive


def _error(call) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        asyncio.run(call) if asyncio.iscoroutine(call) else call()
    return caught.value


def test_values_are_counted_while_the_body_arrives():
    settings = GatewaySettings(max_body_values=5)
    assert asyncio.run(read_body(SCOPE, _receiver(b"[1,2,", b"3,4]"), settings)) == b"[1,2,3,4]"
    # Refused at the chunk that passes the cap: the rest is never read.
    error = _error(read_body(SCOPE, _receiver(b"[1,2,3,", b"4,5,6", b"never read"), settings))
    assert error.kind is Kind.TOO_LARGE and error.status == 413
    assert "over 5 JSON values" in error.message and "GATEWAY_MAX_BODY_VALUES" in error.message


def test_a_body_that_arrives_too_slowly_is_answered_408():
    settings = GatewaySettings(body_timeout=0.05)
    error = _error(read_body(SCOPE, _receiver(b'{"input":', b'"a"}', stall=1.0), settings))
    assert error.kind is Kind.REQUEST_TIMEOUT and error.status == 408
    assert "within 0.05 s" in error.message and "GATEWAY_BODY_TIMEOUT" in error.message


def test_parsing_gives_the_json_modules_answers():
    assert parse_json(b'{"a": "\\ud800x"}') == {"a": "\ud800x"}  # a lone surrogate kept, as json does
    assert parse_json(b'{"a": [1, 2.5, null, true]}') == {"a": [1, 2.5, None, True]}
    assert _error(lambda: parse_json(b'{"input": ["a",')).message.startswith(
        "malformed JSON: Expecting value: line 1 column 16"
    )
    assert _error(lambda: parse_json(b"[" * 100_000 + b"]" * 100_000)).message == (
        "malformed JSON: nested too deeply"
    )


def _limited(body: dict, **settings) -> GatewayError:
    return _error(lambda: check_limits(body, GatewaySettings(**settings)))


@pytest.mark.parametrize(
    ("body", "settings", "message", "param"),
    [
        ({"input": ["x"] * 3}, {"max_items": 2}, "input has 3 entries, over the limit of 2", "input"),
        ({"input": [1, 2, 3]}, {"max_token_ids": 2}, "input has 3 token ids, over the limit of 2", "input"),
        (
            {"input": [[1], [1, 2, 3]]},
            {"max_token_ids": 2},
            "input[1] has 3 token ids, over the limit of 2",
            "input",
        ),
        (
            {"input": [1] + ["a"] * 10},
            {},
            "input mixes token ids with other values: token ids are integers",
            "input",
        ),
        (
            {"messages": [[{"role": "user", "content": [{"type": "text", "text": "abcdefghijk"}]}]]},
            {"max_text_chars": 10},
            "messages[0][0].content[0].text has 11 characters, over the limit of 10",
            "messages",
        ),
        (
            {"query": "q", "documents": ["ok", "long"]},
            {"max_text_chars": 3},
            "documents[1] has 4",
            "documents",
        ),
        ({"input": "a", "instruction": "long"}, {"max_text_chars": 3}, "instruction has 4", "instruction"),
        ({"input": [[[[[[[[[[[[[[[[[[["deep"]]]]]]]]]]]]]]]]]]]}, {}, "request nested too deeply", "input"),
    ],
)
def test_per_field_limits_name_the_field(body, settings, message, param):
    error = _limited(body, **settings)
    assert error.kind is Kind.INVALID and error.message.startswith(message) and error.param == param


def test_media_urls_are_left_to_the_media_limits():
    url = "data:image/png;base64," + "A" * 100
    part = {"type": "image_url", "image_url": {"url": url}}
    check_limits(
        {"messages": [{"role": "user", "content": [part, {"image_url": url}]}]},
        GatewaySettings(max_text_chars=10),
    )


def test_the_parsed_body_is_checked_before_validation():
    body = b'{"input": [' + b",".join([b'"a"'] * 3000) + b"]}"
    error = _error(read_json(SCOPE, _receiver(body), GatewaySettings(offload_bytes=1)))  # in a thread
    assert error.message == "input has 3000 entries, over the limit of 2048"


def test_token_ids_beyond_32_bits_are_refused_not_wrapped():
    request = EmbeddingRequest.model_validate({"input": [5, 2**40]})
    error = _error(lambda: input_items(request, "vllm"))
    assert error.message == "input[0] has a token id over 2147483647" and error.param == "input"


def test_percent_decoding_is_what_the_stdlib_does_at_c_speed(monkeypatch):
    monkeypatch.setattr(media, "UNQUOTE_SLICE", 7)  # escapes across slice borders
    chooser = random.Random(7)
    for _ in range(2000):
        payload = bytes(chooser.choice(b"%%%4aAfFg0z9 x") for _ in range(chooser.randrange(0, 40)))
        assert media.unquote(payload) == urllib.parse.unquote_to_bytes(payload), payload


def test_data_uris_are_sized_before_decoding():
    settings = GatewaySettings(media_max_bytes=10)

    def decode(uri: str) -> bytes:
        return asyncio.run(media.decode_data_uri(uri, settings))

    assert decode("data:image/png,%41%42%zz") == b"AB%zz"
    assert decode("data:image/png;base64," + base64.b64encode(b"0123456789").decode()) == b"0123456789"
    with pytest.raises(ValueError, match="data URI decodes to over 10 bytes, the media limit"):
        decode("data:image/png," + "%41" * 11)
    with pytest.raises(ValueError, match="data URI of 20 base64 characters decodes to over 10 bytes"):
        decode("data:image/png;base64," + "A" * 20)
