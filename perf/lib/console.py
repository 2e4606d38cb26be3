"""What the perf command lines share: progress on stderr and comma lists."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any


def log(message: str) -> None:
    """Progress goes to stderr, unbuffered, so `make perf` shows it while it runs."""
    print(message, file=sys.stderr, flush=True)


def parse_list(text: str | Sequence[str], kind: Callable[[str], Any] = str) -> list:
    items = text.split(",") if isinstance(text, str) else list(text)
    return [kind(item.strip()) for item in items if str(item).strip()]
