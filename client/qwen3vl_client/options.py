"""The settings every client shares, their defaults (defined here once) and their validation."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Literal

MODEL_NAME = "qwen3_vl_embedding"
RERANKER_MODEL_NAME = "qwen3_vl_reranker"
# The task the vLLM-Ascend tutorial and the README use for web-search queries.
DEFAULT_QUERY_TASK = "Given a web search query, retrieve relevant passages that answer the query"
# HTTP: the gateway's KServe v2 REST (its GATEWAY_PORT, 9000), the REST door of make serve, the images and
# the chart; tritonserver's own HTTP (8000) binds loopback: its 2.51 parser must not face clients.
# gRPC: Triton itself.
DEFAULT_URLS = {"http": "localhost:9000", "grpc": "localhost:8001"}
DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_CONCURRENCY = 4
DEFAULT_TIMEOUT = 300.0
DEFAULT_RETRIES = 4
DEFAULT_BACKOFF = 0.5
MAX_BACKOFF = 8.0
# A model being reloaded (its stub died) or a restarting server: waited for this long, polled at most
# MAX_RELOAD_BACKOFF apart. Measured here: a stub reload 1-19 s, a tritonserver restart 40-47 s (tiny model).
DEFAULT_RELOAD_WAIT = 60.0
MIN_RELOAD_BACKOFF = 0.05
MAX_RELOAD_BACKOFF = 0.5
# Triton's HTTP endpoint refuses bodies over 64 MiB by default (--http-max-input-size).
DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024

Transport = Literal["http", "grpc"]  # tritonclient protocol
# A client's priority class: "bulk" (an indexing job) is served after interactive requests, and never
# starved (docs/indexing.md "Priority"; the wire marks in qwen3vl_client._wire.priority_arguments).
PriorityClass = Literal["interactive", "bulk"]
PRIORITY_CLASSES = ("interactive", "bulk")


@dataclass(frozen=True)
class Options:
    """Per-client settings, validated once by ``make_options``."""

    url: str
    protocol: Transport
    model: str
    batch_size: int
    max_concurrency: int
    timeout: float
    retries: int
    backoff: float
    max_request_bytes: int
    reranker_model: str = RERANKER_MODEL_NAME
    reload_wait: float = DEFAULT_RELOAD_WAIT
    priority: PriorityClass = "interactive"


def command_line_arguments(args: Any, **overrides: Any) -> dict[str, Any]:
    """The client's keyword arguments from the ``qwen3vl`` command's common options (an argparse
    namespace), ``overrides`` (``max_concurrency``, ``priority``) on top: how every subcommand opens one."""
    arguments = {
        "url": args.url,
        "protocol": args.protocol,
        "model": args.model,
        "batch_size": args.batch_size,
        "max_concurrency": args.concurrency,
        "timeout": args.timeout,
        "retries": args.retries,
        "reranker_model": args.reranker_model,
    }
    return {**arguments, **overrides}


def make_options(
    url: str | None,
    protocol: Transport,
    model: str,
    batch_size: int,
    max_concurrency: int,
    timeout: float,
    retries: int,
    backoff: float,
    max_request_bytes: int,
    reranker_model: str = RERANKER_MODEL_NAME,
    reload_wait: float = DEFAULT_RELOAD_WAIT,
    priority: PriorityClass = "interactive",
) -> Options:
    if protocol not in DEFAULT_URLS:
        raise ValueError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
    for name, value in (("batch_size", batch_size), ("max_concurrency", max_concurrency)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if retries < 0 or backoff < 0 or timeout <= 0 or max_request_bytes < 1:
        raise ValueError("retries and backoff must be >= 0, timeout and max_request_bytes > 0")
    if reload_wait < 0:
        raise ValueError(f"reload_wait must be >= 0, got {reload_wait}")
    if priority not in PRIORITY_CLASSES:
        raise ValueError(f"priority must be 'interactive' or 'bulk', got {priority!r}")
    url = url or DEFAULT_URLS[protocol]
    # tritonclient wants host:port; people paste URLs.
    url = re.sub(r"^(https?|grpc)://", "", url).rstrip("/")
    return Options(
        url,
        protocol,
        model,
        batch_size,
        max_concurrency,
        timeout,
        retries,
        backoff,
        max_request_bytes,
        reranker_model,
        reload_wait,
        priority,
    )


def capped(options: Options, max_batch_size: int) -> Options:
    """``options`` with ``batch_size`` at most the model's ``max_batch_size`` (0: no limit known): a
    request of more rows would be refused by the server."""
    if 0 < max_batch_size < options.batch_size:
        return replace(options, batch_size=max_batch_size)
    return options
