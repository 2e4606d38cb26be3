"""A small interpreter for the subset of Go templates (with Helm's functions) that the chart uses.

`make manifests` must render the Helm chart with no helm binary. The chart therefore sticks to a small,
ordinary subset of the template language, and this module implements exactly that subset; anything else
raises ``TemplateError`` so that a template using more of Go's language fails the tests instead of
rendering differently from Helm.

Supported: ``{{ pipeline }}`` with ``{{-`` / ``-}}`` trimming and ``{{/* comments */}}``; ``if`` /
``else if`` / ``else`` / ``with`` / ``range`` (over lists and maps, with ``$i, $v :=``) / ``define`` /
``end``; ``$name :=`` and ``$name =``; fields ``.A.B``, ``$``, ``$name.A``; string, number and boolean
literals, ``( ... )`` and ``|`` pipes; the functions in ``FUNCTIONS`` plus ``include``. Missing map keys
evaluate to nil (rendered as an empty string), and numbers from values are float64 (``helm_numbers``), printed
the way Go prints them (16777216 as 1.6777216e+07, unless the template says ``int``), as Helm does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import yaml


class TemplateError(ValueError):
    pass


# ---------------------------------------------------------------- functions (Helm/Sprig semantics)


def truthy(value: Any) -> bool:
    """Go's notion of true: not nil, false, 0, or an empty string / list / map."""
    if value is None or value is False:
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value != 0
    if isinstance(value, (str, list, tuple, dict)):
        return len(value) > 0
    return True


def helm_numbers(value: Any) -> Any:
    """Values as Helm holds them: it reads values files through JSON, so every number is a float64."""
    if isinstance(value, dict):
        return {key: helm_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [helm_numbers(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _json_numbers(value: Any) -> Any:
    # toYaml goes through JSON, which writes a float64 with an integral value without a fraction.
    if isinstance(value, dict):
        return {key: _json_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_numbers(item) for item in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    return value


def go_float(value: float) -> str:
    """Go's %v for a float64: the shortest digits that read back the same, in exponent form when the
    exponent is below -4 or 6 and above (16777216 prints as 1.6777216e+07). That is how Helm prints a
    number from values unless the template converts it with `int`."""
    if value == 0:
        return "0"
    sign, digit_tuple, exponent = Decimal(repr(abs(value))).normalize().as_tuple()
    if not isinstance(exponent, int):  # "n" / "N" (NaN) or "F" (infinity), which Go prints so
        return "NaN" if math.isnan(value) else ("-Inf" if value < 0 else "+Inf")
    digits = "".join(map(str, digit_tuple))
    point = len(digits) + exponent  # digits before the decimal point
    prefix = "-" if value < 0 else ""
    scientific = point - 1
    if scientific < -4 or scientific >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if scientific < 0 else '+'}{abs(scientific):02d}"
    if point >= len(digits):
        return prefix + digits + "0" * (point - len(digits))
    if point <= 0:
        return f"{prefix}0.{'0' * -point}{digits}"
    return f"{prefix}{digits[:point]}.{digits[point:]}"


class _GoYamlDumper(yaml.SafeDumper):
    """Quotes the way Go's yaml (under Helm's toYaml) does: double quotes where a plain scalar won't do."""

    def choose_scalar_style(self):
        style = super().choose_scalar_style()
        return '"' if style == "'" else style


def to_yaml(value: Any) -> str:
    if value is None:
        return "null"
    # Helm's toYaml sorts keys (sigs.k8s.io/yaml) and drops the final newline.
    text = yaml.dump(
        _json_numbers(value), Dumper=_GoYamlDumper, default_flow_style=False, sort_keys=True, width=1 << 16
    )
    return text.rstrip("\n")


def indent(width: int, text: Any) -> str:
    pad = " " * int(width)
    return "\n".join(pad + line for line in to_text(text).split("\n"))


def nindent(width: int, text: Any) -> str:
    return "\n" + indent(width, text)


def quote(*values: Any) -> str:
    return " ".join('"' + to_text(v).replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)


def default(fallback: Any, value: Any = None) -> Any:
    return value if truthy(value) else fallback


def required(message: str, value: Any) -> Any:
    if value is None or value == "":
        raise TemplateError(message)
    return value


def printf(fmt: str, *args: Any) -> str:
    """Go's Sprintf for the verbs the chart uses: %s, %v and %d (which takes integers only: a number from
    values is a float64 there and needs `int`)."""
    verbs = re.findall(r"%([svd])", fmt)
    if len(verbs) != len(args):
        raise TemplateError(f"printf {fmt!r}: {len(verbs)} verbs, {len(args)} arguments")
    for verb, arg in zip(verbs, args, strict=True):
        if verb == "d" and (not isinstance(arg, int) or isinstance(arg, bool)):
            raise TemplateError(f"printf {fmt!r}: %d of {arg!r} (Go prints %!d(float64=...)); use int")
    return re.sub(r"%[svd]", "%s", fmt) % tuple(to_text(a) for a in args)


def to_text(value: Any) -> str:
    """What ``{{ value }}`` prints."""
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, (dict, list)):
        raise TemplateError(f"cannot print a {type(value).__name__} directly; use toYaml: {value!r}")
    return str(value)


def _and(*values: Any) -> Any:
    for value in values:
        if not truthy(value):
            return value
    return values[-1]


def _or(*values: Any) -> Any:
    for value in values:
        if truthy(value):
            return value
    return values[-1]


def _index(collection: Any, keys: tuple) -> Any:
    for key in keys:
        collection = collection[key] if isinstance(collection, list) else (collection or {}).get(key)
    return collection


def _has(value: Any, collection: Any) -> bool:
    return value in (collection or [])


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "toYaml": to_yaml,
    "indent": indent,
    "nindent": nindent,
    "quote": quote,
    "default": default,
    "required": required,
    "printf": printf,
    "eq": lambda a, *others: any(a == b for b in others),
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "gt": lambda a, b: a > b,
    "and": _and,
    "or": _or,
    "not": lambda value: not truthy(value),
    "int": lambda value: int(value or 0),
    "add": lambda *values: sum(int(v) for v in values),
    "mul": lambda a, b: int(a) * int(b),
    "toString": to_text,
    "has": _has,
    "trunc": lambda n, s: s[: int(n)],
    "trimSuffix": lambda suffix, s: s[: -len(suffix)] if suffix and s.endswith(suffix) else s,
    "lower": lambda s: s.lower(),
    "join": lambda separator, values: separator.join(to_text(v) for v in values),
    "index": lambda collection, *keys: _index(collection, keys),
}


# ---------------------------------------------------------------- parsing

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*"|`[^`]*`)
      | (?P<number>-?\d+(?:\.\d+)?)
      | (?P<declare>:=|=)
      | (?P<punct>[|(),])
      | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)
      | (?P<field>(?:\.[A-Za-z0-9_]+)+|\.)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)


@dataclass
class Node:
    kind: str  # text | output | if | range | with | assign | define
    text: str = ""
    expr: list = field(default_factory=list)  # tokens
    body: list = field(default_factory=list)
    otherwise: list = field(default_factory=list)
    names: tuple[str, ...] = ()


def tokenize(source: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    source = source.rstrip()
    while position < len(source):
        match = _TOKEN.match(source, position)
        kind = match.lastgroup if match else None
        if match is None or kind is None or match.end() == position:
            raise TemplateError(f"cannot parse {source[position:]!r} in {{{{ {source} }}}}")
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


def _split_actions(source: str) -> list[tuple[str, str]]:
    """Text and action pieces, with the whitespace that ``{{-`` / ``-}}`` trim removed."""
    pieces: list[tuple[str, str]] = []
    position = 0
    trim_next = False
    for match in _ACTION.finditer(source):
        text = source[position : match.start()]
        if trim_next:
            text = text.lstrip()
        if match.group(1):
            text = text.rstrip()
        pieces.append(("text", text))
        pieces.append(("action", match.group(2).strip()))
        trim_next = bool(match.group(3))
        position = match.end()
    tail = source[position:]
    pieces.append(("text", tail.lstrip() if trim_next else tail))
    return pieces


def parse(source: str) -> tuple[list[Node], dict[str, list[Node]]]:
    """The template's nodes and the blocks it ``define``s."""
    defines: dict[str, list[Node]] = {}
    root: list[Node] = []
    stack: list[tuple[Node | None, list[Node]]] = [(None, root)]
    for kind, piece in _split_actions(source):
        body = stack[-1][1]
        if kind == "text":
            if piece:
                body.append(Node("text", text=piece))
            continue
        if piece.startswith("/*"):
            continue
        keyword, _, rest = piece.partition(" ")
        if keyword in ("if", "with"):
            node = Node(keyword, expr=tokenize(rest))
            body.append(node)
            stack.append((node, node.body))
        elif keyword == "range":
            tokens = tokenize(rest)
            names: tuple[str, ...] = ()
            if ("declare", ":=") in tokens:
                cut = tokens.index(("declare", ":="))
                names = tuple(value for kind_, value in tokens[:cut] if kind_ == "var")
                tokens = tokens[cut + 1 :]
            node = Node("range", expr=tokens, names=names)
            body.append(node)
            stack.append((node, node.body))
        elif keyword == "define":
            name = tokenize(rest)[0][1].strip('"')
            node = Node("define", text=name)
            defines[name] = node.body
            stack.append((node, node.body))
        elif keyword == "else":
            owner = stack[-1][0]
            if owner is None or owner.kind not in ("if", "with", "range"):
                raise TemplateError("else outside if/with/range")
            stack.pop()
            if rest.startswith("if "):
                # `else if X` is an if nested in the else branch that closes with the same `end`.
                nested = Node("if", expr=tokenize(rest[3:]))
                owner.otherwise.append(nested)
                nested.names = ("elif",)
                stack.append((nested, nested.body))
            else:
                stack.append((owner, owner.otherwise))
        elif keyword == "end":
            if len(stack) == 1:
                raise TemplateError("end without a block")
            # One `end` closes an `if` together with its `else if` chain: each `else if` replaced its
            # owner on the stack.
            stack.pop()
        else:
            tokens = tokenize(piece)
            if len(tokens) > 2 and tokens[0][0] == "var" and tokens[1][0] == "declare":
                body.append(Node("assign", expr=tokens[2:], names=(tokens[0][1],)))
            else:
                body.append(Node("output", expr=tokens))
    if len(stack) != 1:
        raise TemplateError(f"unclosed {stack[-1][0].kind if stack[-1][0] else 'block'}")
    return root, defines


# ---------------------------------------------------------------- evaluation


def _lookup(value: Any, path: list[str]) -> Any:
    for key in path:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise TemplateError(f"cannot take field {key!r} of {type(value).__name__} {value!r}")
        value = value.get(key)
    return value


class Renderer:
    def __init__(self, defines: dict[str, list[Node]]) -> None:
        self.defines = defines

    def render(self, nodes: list[Node], dot: Any, variables: dict[str, Any]) -> str:
        out: list[str] = []
        for node in nodes:
            if node.kind == "text":
                out.append(node.text)
            elif node.kind == "output":
                out.append(to_text(self.pipeline(node.expr, dot, variables)))
            elif node.kind == "assign":
                variables[node.names[0]] = self.pipeline(node.expr, dot, variables)
            elif node.kind == "if":
                chosen = node.body if truthy(self.pipeline(node.expr, dot, variables)) else node.otherwise
                out.append(self.render(chosen, dot, variables))
            elif node.kind == "with":
                value = self.pipeline(node.expr, dot, variables)
                if truthy(value):
                    out.append(self.render(node.body, value, variables))
                else:
                    out.append(self.render(node.otherwise, dot, variables))
            elif node.kind == "range":
                out.append(self._range(node, dot, variables))
            # define nodes render nothing where they stand
        return "".join(out)

    def _range(self, node: Node, dot: Any, variables: dict[str, Any]) -> str:
        value = self.pipeline(node.expr, dot, variables)
        if isinstance(value, Mapping):
            items = sorted(value.items())  # Go ranges over maps in key order
        else:
            items = list(enumerate(value or []))
        if not items:
            return self.render(node.otherwise, dot, variables)
        out = []
        for key, item in items:
            scope = dict(variables)
            if len(node.names) == 1:
                scope[node.names[0]] = item
            elif len(node.names) == 2:
                scope[node.names[0]], scope[node.names[1]] = key, item
            out.append(self.render(node.body, item, scope))
        return "".join(out)

    def include(self, name: str, dot: Any) -> str:
        if name not in self.defines:
            raise TemplateError(f"no template named {name!r}")
        return self.render(self.defines[name], dot, {"$": dot})

    def pipeline(self, tokens: list[tuple[str, str]], dot: Any, variables: dict[str, Any]) -> Any:
        commands: list[list[Any]] = [[]]
        depth = 0
        for token in tokens:
            if token == ("punct", "(") or token == ("punct", ")"):
                depth += 1 if token[1] == "(" else -1
            if token == ("punct", "|") and depth == 0:
                commands.append([])
            else:
                commands[-1].append(token)
        value: Any = None
        for index, command in enumerate(commands):
            piped = () if index == 0 else (value,)
            value = self.command(command, dot, variables, piped)
        return value

    def command(self, tokens: list, dot: Any, variables: dict[str, Any], piped: tuple) -> Any:
        if not tokens:
            raise TemplateError("empty command")
        kind, word = tokens[0]
        if kind == "ident" and word not in ("true", "false", "nil"):
            args = [*self.operands(tokens[1:], dot, variables), *piped]
            if word == "include":
                return self.include(*args)
            if word not in FUNCTIONS:
                raise TemplateError(f"function {word!r} is not supported by deploy.gotemplate")
            return FUNCTIONS[word](*args)
        values = self.operands(tokens, dot, variables)
        if piped or len(values) != 1:
            raise TemplateError(f"{word!r} is not a function")
        return values[0]

    def operands(self, tokens: list, dot: Any, variables: dict[str, Any]) -> list[Any]:
        values, index = [], 0
        while index < len(tokens):
            kind, word = tokens[index]
            if (kind, word) == ("punct", "("):
                depth, end = 1, index + 1
                while depth:
                    if tokens[end] == ("punct", "("):
                        depth += 1
                    elif tokens[end] == ("punct", ")"):
                        depth -= 1
                    end += 1
                values.append(self.pipeline(tokens[index + 1 : end - 1], dot, variables))
                index = end
                continue
            if kind == "string":
                values.append(
                    word[1:-1] if word[0] == "`" else bytes(word[1:-1], "utf-8").decode("unicode_escape")
                )
            elif kind == "number":
                values.append(float(word) if "." in word else int(word))
            elif kind == "field":
                values.append(dot if word == "." else _lookup(dot, word[1:].split(".")))
            elif kind == "var":
                name, *path = word.split(".")
                if name not in variables:
                    raise TemplateError(f"undefined variable {name}")
                values.append(_lookup(variables[name], path))
            elif kind == "ident" and word in ("true", "false", "nil"):
                values.append({"true": True, "false": False, "nil": None}[word])
            else:
                raise TemplateError(f"unexpected {word!r}")
            index += 1
        return values


def render_templates(sources: Mapping[str, str], context: Mapping[str, Any]) -> dict[str, str]:
    """Render every template (name -> text); blocks ``define``d in any file (``_helpers.tpl``) are shared,
    and files whose name starts with ``_`` render nothing, as in Helm."""
    parsed = {name: parse(text) for name, text in sources.items()}
    defines: dict[str, list[Node]] = {}
    for _, file_defines in parsed.values():
        defines.update(file_defines)
    renderer = Renderer(defines)
    return {
        name: renderer.render(nodes, context, {"$": context})
        for name, (nodes, _) in parsed.items()
        if not name.rsplit("/", 1)[-1].startswith("_")
    }
