"""What the client raises: every failure names the input items it concerns."""

from __future__ import annotations

from collections.abc import Sequence


class EmbeddingError(Exception):
    """Base class of every error about a failed embedding call."""


class ItemError(EmbeddingError):
    """One input item could not be embedded: the server rejected it, or its file could not be read.

    ``index`` is the item's position in the caller's input, ``description`` a short summary of it
    (its text, file names), ``reason`` what is wrong and ``status`` the server's status code
    (``None`` for problems found on the client, such as a missing file).
    """

    def __init__(self, index: int, description: str, reason: str, status: str | None = None):
        self.index = index
        self.description = description
        self.reason = reason
        self.status = status
        super().__init__(f"item {index} ({description}): {reason}")


class RequestError(EmbeddingError):
    """A request failed for a reason not tied to one item (server error, unknown model, timeout)."""

    def __init__(self, indices: Sequence[int], reason: str, status: str | None = None):
        self.indices = tuple(indices)
        self.reason = reason
        self.status = status
        super().__init__(f"request for {describe_indices(self.indices)} failed: {reason}")


class ServerUnavailableError(RequestError):
    """The server stayed unreachable or UNAVAILABLE through every retry."""


def describe_indices(indices: Sequence[int]) -> str:
    if not indices:
        return "no items"
    if len(indices) == 1:
        return f"item {indices[0]}"
    if list(indices) == list(range(indices[0], indices[-1] + 1)):
        return f"items {indices[0]}-{indices[-1]}"
    return "items " + ", ".join(str(index) for index in indices)
