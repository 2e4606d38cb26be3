"""Schema failures as the gateway's 400 messages: ``field[index].field: what is wrong``, in the words a
client needs, without the validator's internals (its union branch names, its "Value error," prefix, its
class names)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from gateway.errors import GatewayError, invalid

MAX_SHOWN = 3
# What a field that takes several shapes takes, said once when no shape comes closer than another.
SHAPES = {
    "input": "must be a string, a list of strings, a list of token ids or a list of lists of token ids",
    "messages": "must be a conversation (a list of messages) or a list of conversations",
    "query": 'must be a string, {"text": ...} or {"content": [parts]}',
    "documents": 'must be a list of strings, {"text": ...} or {"content": [parts]} objects',
    "content": "must be a string or a list of content parts",
    "image_url": 'must be a URL string or {"url": ...}',
    "video_url": 'must be a URL string or {"url": ...}',
}
SIDE_SHAPE = 'must be a string, {"text": ...}, {"content": [parts]}, or a list of them'
# A union branch in a location: `str`, `list[int]`, `ScoreContent`, `function-after[...]`.
_BRANCH = re.compile(r"[\[\](),-]|\A(str|int|float|bool|[A-Z]\w*)\Z")
_MESSAGES = {
    "model_type": "Input should be an object",
    "model_attributes_type": "Input should be an object",
    "dict_type": "Input should be an object",
}


def _where(loc: tuple[Any, ...]) -> tuple[str, int]:
    """``messages[0].content[1]`` and the depth of the union branch taken (0: none)."""
    text, branches = "", 0
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _BRANCH.search(part):
            branches += 1
        else:
            text += f".{part}" if text else part
    return text, branches


def _message(problem: Any) -> str:
    message = _MESSAGES.get(problem["type"], problem["msg"])
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def validation_error(error: ValidationError) -> GatewayError:
    """The first few problems, one per field; a field of several shapes that fits none is told the shapes
    it takes, unless one shape came further than the others (then that shape's problem)."""
    problems = error.errors(include_url=False, include_input=False)
    by_field: dict[str, list[Any]] = {}
    for problem in problems:
        field = str(problem["loc"][0]) if problem["loc"] else ""
        by_field.setdefault(field, []).append(problem)
    shown: list[str] = []
    for field, found in by_field.items():
        deepest = max(len(problem["loc"]) for problem in found)
        closest = [problem for problem in found if len(problem["loc"]) == deepest]
        branches = {_where(problem["loc"])[1] for problem in found}
        if len(found) > 1 and branches != {0} and len(closest) > 1 and _ties(closest):
            shape = SHAPES.get(field, SIDE_SHAPE if field.startswith(("text_", "data_")) else None)
            shown.append(f"{field}: {shape or 'has the wrong type'}")
            continue
        for problem in closest[:MAX_SHOWN]:
            where, _ = _where(problem["loc"])
            shown.append(f"{where}: {_message(problem)}" if where else _message(problem))
    kept = list(dict.fromkeys(shown))
    more = len(kept) - MAX_SHOWN
    message = "; ".join(kept[:MAX_SHOWN]) + (f" (and {more} more)" if more > 0 else "")
    first = next(iter(by_field), "")
    return invalid(message, param=first or None)


def _ties(closest: list[Any]) -> bool:
    """Several union branches failed equally far in: none is the one the client meant."""
    return len({tuple(part for part in problem["loc"] if isinstance(part, str)) for problem in closest}) > 1
