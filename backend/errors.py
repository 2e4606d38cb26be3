"""The one error type the backend raises for problems a caller can fix.

model.py files map `InputError` to Triton's INVALID_ARG and anything else to INTERNAL, so a bad row
never looks like a server fault and a server fault never blames the client.
"""

from __future__ import annotations


class InputError(ValueError):
    """A request (or one of its rows) is invalid; the message says what is wrong and where."""

    def __init__(self, message: str, row: int | None = None):
        self.row = row
        self.detail = message
        super().__init__(message if row is None else f"row {row}: {message}")

    def at_row(self, row: int) -> InputError:
        """The same error, now naming the batch row it came from."""
        return self if self.row is not None else InputError(self.detail, row=row)


class ConfigError(RuntimeError):
    """The model configuration or the environment cannot work (bad parameter, no device, no model)."""
