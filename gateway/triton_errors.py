"""Triton's errors as the gateway's: the status map (the one place that turns Triton's status codes into
gateway error kinds), whom a failed call blames (``subject[index]``, the shared query, or every row), and
what is worth waiting out (a model being reloaded, a restarting tritonserver) within RELOAD_WAIT_SECS.
The texts they read are the client core's (``qwen3vl_client._retry``), the one parser of ``row N:``."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.coalescing import Blame, RowRejected
from gateway.errors import GatewayError, Kind
from qwen3vl_client import _wire
from qwen3vl_client._retry import (
    BUSY,
    OVERLOADED,
    error_status,
    error_text,
    is_down,
    is_reloading,
    pin,
    row_of,
)

_KIND_BY_STATUS = {
    "StatusCode.INVALID_ARGUMENT": Kind.INVALID,
    "StatusCode.UNAVAILABLE": Kind.UNAVAILABLE,
    "StatusCode.RESOURCE_EXHAUSTED": Kind.UNAVAILABLE,
    "StatusCode.DEADLINE_EXCEEDED": Kind.TIMEOUT,
    "StatusCode.NOT_FOUND": Kind.UNAVAILABLE,  # the gateway asks only for the ensembles it serves
}
# How long a call waits for a model being reloaded or a restarting tritonserver (at most request_timeout).
RELOAD_WAIT_SECS = 60.0
# The first pause; doubled up to MAX_RELOAD_BACKOFF (0.5 s): Triton's return is noticed within that.
RELOAD_FIRST_BACKOFF_SECS = 0.1


def kind_of(error: BaseException) -> Kind:
    if is_reloading(error):
        return Kind.UNAVAILABLE  # a stub died under the request, or its model is being reloaded: retry later
    kind = _KIND_BY_STATUS.get(error_status(error) or "", Kind.INTERNAL)
    if kind is Kind.UNAVAILABLE and BUSY.search(error_text(error)):
        return Kind.OVERLOADED  # Triton is up, its queue is not: the request may be sent again
    return kind


def refused_for_load(error: GatewayError) -> bool:
    """Triton's steps refused the call for load ("... overloaded (expected wait ...)"; UNAVAILABLE, at once),
    as opposed to Triton being down or reloading."""
    return error.kind is Kind.UNAVAILABLE and bool(OVERLOADED.search(error.message))


def reloading(error: BaseException) -> bool:
    """A served ensemble's call failed because Triton reloads it (or a step's stub died under it) or is
    restarting: worth waiting for. Busy is not (refused at once), nor is anything the caller sent."""
    if isinstance(error, RowRejected):
        error = error.error
    return is_reloading(error) or is_down(error, (ConnectionError,))


def blame(error: BaseException, rows: Sequence[int], subject: str, about_query: bool = False) -> GatewayError:
    """Triton's error for a request made of the caller's items ``rows`` as a gateway error: a row the
    backend names (or the row ``RowRejected`` names, for a call merged with other requests' rows)
    becomes ``subject[index]`` in the caller's numbering; reranker errors about the shared query name
    the query."""
    row = None
    if isinstance(error, RowRejected):
        row, error = error.row, error.error
    kind, message = kind_of(error), error_text(error)
    if kind is not Kind.INVALID:
        return GatewayError(kind, f"Triton: {message}")
    pinned = pin(message, len(rows), _wire.QUERY_MARKERS if about_query else (), row)
    if pinned.shared:
        return GatewayError(kind, f"query: {pinned.reason}", param="query")
    if pinned.row is not None or len(rows) == 1:
        return GatewayError(kind, f"{subject}[{rows[pinned.row or 0]}]: {pinned.reason}", param=subject)
    return GatewayError(kind, message, param=subject)


def judge(error: Exception) -> int | Blame:
    """Whom a merged call's error concerns: the row the backend names, an unknown row (an invalid request
    that names none, or an internal error: sent again alone, no other request fails with it), or every
    row (Triton unavailable, overloaded, timed out)."""
    kind = kind_of(error)
    if kind is Kind.INVALID:
        row, _ = row_of(error_text(error))
        return Blame.UNKNOWN if row is None else row
    return Blame.UNKNOWN if kind is Kind.INTERNAL else Blame.ALL
