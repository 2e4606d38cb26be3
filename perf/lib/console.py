"""What the perf command lines share: their parsers and common options, progress on stderr, comma lists,
markdown blocks."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any


def log(message: str) -> None:
    """Progress goes to stderr, unbuffered, so `make perf` shows it while it runs."""
    print(message, file=sys.stderr, flush=True)


def parse_list(text: str | Sequence[str], kind: Callable[[str], Any] = str) -> list:
    items = text.split(",") if isinstance(text, str) else list(text)
    return [kind(item.strip()) for item in items if str(item).strip()]


def command_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of `python -m <module>`; its help shows the module's docstring as written."""
    return argparse.ArgumentParser(
        prog=f"python -m {module}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_out_argument(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """`--out DIR`: where the results go (default: today's results directory of this host)."""
    parser.add_argument(
        "--out", type=Path, required=required, default=None, help="default: perf/results/<host>/<date>"
    )


def add_priority_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--priority",
        type=int,
        default=0,
        help="scheduling nice of the server, the gateway and the clients, e.g. -10 on a machine others "
        "share (root)",
    )


def code_block(title: str, lines: list[str]) -> list[str]:
    """Markdown: a title line and `lines` as written (a log excerpt)."""
    return [f"{title}:", "", "```", *lines, "```", ""]


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
