"""Every knob of the gateway, read once from the environment into one frozen object.

``ENVIRONMENT`` names the variable behind each field; docs/configuration.md's table is rendered from both
(tools/settings_tables.py; a unit test keeps them in step).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_type_hints

MIB = 1024 * 1024
InputFormat = Literal["official", "vllm"]
INPUT_FORMATS: tuple[InputFormat, ...] = ("official", "vllm")
# The tokenizer when neither GATEWAY_TOKENIZER / MODEL_PATH nor Triton names a checkpoint: the one the
# backend runs by default, in this checkout (the gateway imports nothing from backend/).
DEFAULT_TOKENIZER_PATH = Path(__file__).resolve().parent.parent / "models" / "qwen3-vl-embedding-tiny"
DEFAULT_RERANKER_PATH = DEFAULT_TOKENIZER_PATH.parent / "qwen3-vl-reranker-tiny"


@dataclasses.dataclass(frozen=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 9000
    # When set, every route but /health, /ping, /version and /metrics wants `Authorization: Bearer <key>`.
    api_key: str | None = None
    # Names clients may put in `model`; the first is the one reported when a request names none. Unset =
    # what vLLM would serve for the weights Triton runs (gateway/names.py); the ensemble name always works.
    served_model_names: tuple[str, ...] | None = None
    served_reranker_names: tuple[str, ...] | None = None
    triton_grpc_url: str = "127.0.0.1:8001"
    embedding_model: str = "qwen3_vl_embedding"  # Triton ensemble names
    reranker_model: str = "qwen3_vl_reranker"
    # tokenizer.json directory for /tokenize, /detokenize and truncation in vllm format; unset = the
    # model_path the embedding preprocess step reports (or MODEL_PATH).
    tokenizer_path: str | None = None
    # The reranker's checkpoint, for its served names when Triton reports none (unset = RERANKER_MODEL_PATH).
    reranker_path: str | None = None
    # How `input` strings are embedded: the official format, or vLLM's raw completion path.
    input_format: InputFormat = "official"
    max_body_bytes: int = 64 * MIB
    max_items: int = 2048  # inputs, conversations, documents or pairs per request (entries per list)
    # Checked while the body arrives (commas) and on the parsed body, before validation builds anything:
    # a body's cost is its values, not its bytes. 2 M values parse in ~0.3 s (jiter, loaded 2-core host),
    # the time the loop is held; the Python objects they make stay well under 1 GB.
    max_body_values: int = 2_000_000
    max_token_ids: int = 131_072  # per item
    # Per text. Above the backend's own limit (1 MiB of UTF-8, which it names per row): this one only
    # bounds the work of what could never pass.
    max_text_chars: int = 4 * MIB
    # Requests at Triton at once: at most max_in_flight, and (unless 0) what Triton finishes in
    # in_flight_seconds at the measured rate. Triton's steps refuse what waits over 10 s (config.pbtxt);
    # 5 s keeps clear of that on a slow host and lets batches grow on a fast one (tiny model, 1,000-request
    # burst, loaded 2-core host: 64 fixed -> 30 CPU-s in Triton; 256 -> 21 CPU-s but 10 % past Triton's
    # timeout). What Triton refuses anyway waits again here.
    max_in_flight: int = 256
    in_flight_seconds: float = 5.0
    max_waiting: int = 20_000
    # Batch while busy: at most this many Triton calls of text rows per ensemble at once; requests that
    # arrive while they run are merged into one call (up to the ensemble's max_batch_size rows) when one
    # finishes. A request that finds none of ours at Triton goes at once. 0 = every request its own call.
    # 1 serialises the calls (c=64 on 2 cores: 0.83 x off); 2 and 4 both cut Triton's CPU per request by
    # 10-20 %, 4 gained at c=16 and c=64 alike (perf/results/cpu-x86_64-2c/2026-11-30/gateway-coalesce-ab*).
    coalesce_calls: int = 4
    # And at most this many tokens (estimated from the text's bytes) in one merged call: 64 rows of 3,000
    # tokens are ~8 s of work for the tiny model on 2 busy cores, and all merged behind them waited past the
    # steps' 10 s queue timeout to be refused late (gateway refusal p99 19 s at 4x load). 64 rows of ~200
    # tokens still go together. 0 = rows alone bound a merged call.
    coalesce_max_tokens: int = 16_384
    # Work that would wait longer than this for an in-flight slot is answered 503 + Retry-After. The seed's
    # burst (1,000 x 200 tokens at once) takes ~20 s on the 8B, and 62-104 s for the tiny model on two busy
    # cores: the default sheds only what could not even start within one Triton call's timeout.
    queue_timeout: float = 300.0
    # Requests may be held back this long (every slot taken) while arriving faster than they complete
    # before that counts as overload rather than a burst: then newcomers are refused at once while a round
    # of calls waits, and those waiting are served. Longer than a burst takes to arrive, by a quarter (the
    # room must grow through each quarter): the 1,000-connection burst test passed at 2 s with three CPU
    # hogs on the 2 cores, and lost 101 requests at 1 s with two. What it holds back is served late, not
    # refused: at 4x load, ~4x this long (5 s: admitted p50 15.7 s, p99 24 s). 0 = first come, first
    # served; only GATEWAY_QUEUE_TIMEOUT sheds.
    burst_seconds: float = 2.0
    # Unless 0, the in-flight bound also keeps Triton's call latency near this many times its latency for
    # one call alone (bigger batches buy throughput only within that), and under overload nobody waits.
    latency_target_ratio: float = 0.0
    request_timeout: float = 300.0  # one Triton call
    retry_after: int = 1  # seconds, on 503s that have no better estimate
    # Media by URL: data: URIs always; http(s) only when allowed; file: only under this directory.
    allow_url_fetch: bool = False
    allowed_local_media_path: str | None = None
    media_fetch_timeout: float = 10.0
    media_max_bytes: int = 64 * MIB
    # Bodies, base64 payloads and tensors bigger than this are handled in a worker thread, off the loop.
    offload_bytes: int = 1 * MIB
    # Slow or idle clients: request headers must arrive within header_timeout of the connection opening
    # (or of the last response), the body within body_timeout (408); an idle keep-alive connection is
    # closed after keep_alive_timeout.
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: int = 5  # whole seconds (uvicorn's unit)
    log_level: str = "info"

    def __post_init__(self) -> None:
        if self.input_format not in INPUT_FORMATS:
            raise ValueError(f"input_format must be one of {INPUT_FORMATS}, got {self.input_format!r}")
        for name in (
            "max_body_bytes",
            "max_items",
            "max_body_values",
            "max_token_ids",
            "max_text_chars",
            "max_in_flight",
            "media_max_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.coalesce_calls < 0:
            raise ValueError(f"coalesce_calls must be 0 (off) or positive, got {self.coalesce_calls}")
        if self.coalesce_max_tokens < 0:
            raise ValueError(
                f"coalesce_max_tokens must be 0 (no limit) or positive, got {self.coalesce_max_tokens}"
            )
        if self.in_flight_seconds < 0:
            raise ValueError(
                f"in_flight_seconds must be 0 (fixed bound) or positive, got {self.in_flight_seconds}"
            )
        if self.burst_seconds < 0:
            raise ValueError(f"burst_seconds must be 0 (off) or positive, got {self.burst_seconds}")
        if self.latency_target_ratio != 0 and self.latency_target_ratio <= 1:
            raise ValueError(
                f"latency_target_ratio must be 0 (off) or over 1, got {self.latency_target_ratio}"
            )
        for name in (
            "queue_timeout",
            "request_timeout",
            "media_fetch_timeout",
            "header_timeout",
            "body_timeout",
            "keep_alive_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.served_model_names == () or self.served_reranker_names == ():
            raise ValueError("served model names must not be empty")

    @property
    def model_name(self) -> str | None:
        """The configured embedding name reported first (None = from the weights)."""
        return self.served_model_names[0] if self.served_model_names else None


ENVIRONMENT = {
    "host": "GATEWAY_HOST",
    "port": "GATEWAY_PORT",
    "api_key": "GATEWAY_API_KEY",
    "served_model_names": "SERVED_MODEL_NAME",
    "served_reranker_names": "SERVED_RERANKER_MODEL_NAME",
    "triton_grpc_url": "TRITON_GRPC_URL",
    "embedding_model": "GATEWAY_EMBEDDING_MODEL",
    "reranker_model": "GATEWAY_RERANKER_MODEL",
    "tokenizer_path": "GATEWAY_TOKENIZER",
    "reranker_path": "GATEWAY_RERANKER_PATH",
    "input_format": "GATEWAY_INPUT_FORMAT",
    "max_body_bytes": "GATEWAY_MAX_BODY_BYTES",
    "max_items": "GATEWAY_MAX_ITEMS",
    "max_body_values": "GATEWAY_MAX_BODY_VALUES",
    "max_token_ids": "GATEWAY_MAX_TOKEN_IDS",
    "max_text_chars": "GATEWAY_MAX_TEXT_CHARS",
    "max_in_flight": "GATEWAY_MAX_IN_FLIGHT",
    "in_flight_seconds": "GATEWAY_IN_FLIGHT_SECONDS",
    "max_waiting": "GATEWAY_MAX_WAITING",
    "coalesce_calls": "GATEWAY_COALESCE_CALLS",
    "coalesce_max_tokens": "GATEWAY_COALESCE_MAX_TOKENS",
    "queue_timeout": "GATEWAY_QUEUE_TIMEOUT",
    "burst_seconds": "GATEWAY_BURST_SECONDS",
    "latency_target_ratio": "GATEWAY_LATENCY_TARGET_RATIO",
    "request_timeout": "GATEWAY_REQUEST_TIMEOUT",
    "retry_after": "GATEWAY_RETRY_AFTER",
    "allow_url_fetch": "GATEWAY_ALLOW_URL_FETCH",
    "allowed_local_media_path": "GATEWAY_ALLOWED_LOCAL_MEDIA_PATH",
    "media_fetch_timeout": "GATEWAY_MEDIA_FETCH_TIMEOUT",
    "media_max_bytes": "GATEWAY_MEDIA_MAX_BYTES",
    "offload_bytes": "GATEWAY_OFFLOAD_BYTES",
    "header_timeout": "GATEWAY_HEADER_TIMEOUT",
    "body_timeout": "GATEWAY_BODY_TIMEOUT",
    "keep_alive_timeout": "GATEWAY_KEEP_ALIVE_TIMEOUT",
    "log_level": "GATEWAY_LOG_LEVEL",
}


def _parse(name: str, hint: Any, text: str) -> Any:
    hint_text = str(hint)
    if hint_text.startswith("tuple"):
        names = tuple(part.strip() for part in text.split(",") if part.strip())
        if not names:
            raise ValueError(f"{ENVIRONMENT[name]} names no model")
        return names
    if "bool" in hint_text:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{ENVIRONMENT[name]} must be true or false, got {text!r}")
    if "int" in hint_text and "float" not in hint_text:
        return int(text)
    if "float" in hint_text:
        return float(text)
    return text


def settings_from_env(environ: Mapping[str, str] | None = None, **overrides: Any) -> GatewaySettings:
    """Settings from the environment (empty values = default), then ``overrides``. Without
    TRITON_GRPC_URL, Triton is on this host at TRITON_GRPC_PORT (what ``make serve`` exports)."""
    environ = os.environ if environ is None else environ
    hints = get_type_hints(GatewaySettings)
    values: dict[str, Any] = {}
    for name, variable in ENVIRONMENT.items():
        text = environ.get(variable, "")
        if text.strip():
            values[name] = _parse(name, hints[name], text)
    if "triton_grpc_url" not in values and environ.get("TRITON_GRPC_PORT", "").strip():
        values["triton_grpc_url"] = f"127.0.0.1:{int(environ['TRITON_GRPC_PORT'])}"
    if "tokenizer_path" not in values and environ.get("MODEL_PATH", "").strip():
        values["tokenizer_path"] = environ["MODEL_PATH"]
    if "reranker_path" not in values and environ.get("RERANKER_MODEL_PATH", "").strip():
        values["reranker_path"] = environ["RERANKER_MODEL_PATH"]
    values.update(overrides)
    return GatewaySettings(**values)
