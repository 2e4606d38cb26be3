"""Error kinds the backend raises, and the one grammar their messages follow.

- `InputError`: a request (or one of its rows) is invalid; the client can fix it -> Triton INVALID_ARG
  (HTTP 400).
- `UnavailableError`: the server cannot run this request now (the device is out of memory even for it
  alone); retrying later may work -> UNAVAILABLE (HTTP 503), which the client retries.
- `CancelledError`: the client went away before the work started; the work is skipped -> CANCELLED.
- `ConfigError`: the model configuration or the environment cannot work -> the model fails to load.
Anything else is our own bug -> INTERNAL. `backend.triton_io` maps kinds to Triton codes in one place.

Messages read `row {row}: {input}: {message}`, each part present when known (`row 1: IMAGE[0]: bytes are
not a decodable image (...)`). Triton prefixes a composing model's message with `in ensemble '<name>', `;
the client finds the failed row with `ROW_PATTERN` (restated in qwen3vl_client, checked by a unit test).
"""

from __future__ import annotations

import logging
import re

logger = logging.getLogger(__name__)

ROW_PATTERN = re.compile(r"\brow (\d+): ")


def format_message(message: str, row: int | None = None, input: str | None = None) -> str:
    parts = ([f"row {row}"] if row is not None else []) + ([input] if input else []) + [message]
    return ": ".join(parts)


class InputError(ValueError):
    """A request (or one of its rows) is invalid; the message says what is wrong and where."""

    def __init__(self, message: str, row: int | None = None, input: str | None = None):
        self.row = row
        self.input = input
        self.detail = message
        super().__init__(format_message(message, row, input))

    def at_row(self, row: int) -> InputError:
        """The same error, now naming the batch row it came from."""
        return self if self.row is not None else InputError(self.detail, row=row, input=self.input)

    def at_input(self, input: str) -> InputError:
        """The same error, now naming the input it came from (kept if it already names one)."""
        return self if self.input is not None else InputError(self.detail, row=self.row, input=input)


class UnavailableError(RuntimeError):
    """The request is well-formed but cannot run now (e.g. out of device memory even on its own)."""


class CancelledError(RuntimeError):
    """The client cancelled the request (or its deadline passed) before the step ran it."""

    def __init__(self) -> None:
        super().__init__("request cancelled by the client before it ran")


class ConfigError(RuntimeError):
    """The model configuration or the environment cannot work (bad parameter, no device, no model)."""


def failure(error: Exception, what: str) -> Exception:
    """The error as a request's result, logged as its kind deserves (a client's mistake is not logged)."""
    if isinstance(error, UnavailableError):
        logger.warning("%s unavailable: %s", what, error)
    elif not isinstance(error, (InputError, CancelledError)):
        logger.exception("%s failed", what, exc_info=error)
    return error
