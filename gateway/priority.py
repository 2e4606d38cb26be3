"""A request's priority class: `X-Priority: bulk` (or vLLM's body field `priority` above 0: vLLM serves
lower values first) marks an indexing job's request, which the server runs after interactive ones and never
starves (docs/indexing.md "Priority"). The class travels to Triton with the call
(qwen3vl_client._wire.priority_arguments); the gateway's own admission is shared by both classes.

Set per request by the pooling routes (gateway.app.PoolingRoute) in a context variable, read where the
gateway calls Triton (gateway.triton), so that the handlers between need not pass it on.
"""

from __future__ import annotations

from contextvars import ContextVar

from gateway.errors import invalid
from qwen3vl_client.options import PRIORITY_CLASSES, PriorityClass

PRIORITY_HEADER = b"x-priority"

current: ContextVar[PriorityClass] = ContextVar("priority_class", default="interactive")


def priority_class(header_value: str, body_priority: int = 0) -> PriorityClass:
    """The class a request asks for: the header when sent (interactive | bulk, any case), else bulk for a
    body `priority` above 0. An unknown header value is the caller's mistake (400), not silently ignored."""
    value = header_value.strip().lower()
    if value:
        if value not in PRIORITY_CLASSES:
            raise invalid(
                f"X-Priority must be one of {', '.join(PRIORITY_CLASSES)}, got {header_value.strip()!r}",
                "X-Priority",
            )
        return "bulk" if value == "bulk" else "interactive"
    return "bulk" if body_priority > 0 else "interactive"
