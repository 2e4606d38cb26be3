"""A flame graph SVG from collapsed stacks (`frame;frame;... count` lines, py-spy's `--format raw`).

py-spy writes either raw stacks or an SVG per run; the CPU breakdown needs the raw stacks for its table, so
the picture is drawn from the same samples here instead of profiling twice. Plain SVG, no script: widths are
shares of all samples, colours only tell neighbouring frames apart, each frame's title gives its samples.
"""

from __future__ import annotations

import html
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

WIDTH = 1800
ROW = 17
FONT = 11
MIN_WIDTH_PX = 0.6  # narrower frames are left out of the picture (still counted in their parents)
MAX_DEPTH = 36  # deeper frames are cut (torch.vmap and dispatch frames run 60+ deep)
# torch's and functools' call wrappers: one per module call, they only make the picture deeper.
WRAPPERS = ("._wrapped_call_impl", "._call_impl", ".decorate_context", ".wrapped_func", ".wrapper")


@dataclass
class Node:
    name: str
    samples: int = 0
    children: dict[str, Node] = field(default_factory=dict)


def tree(stacks: Iterable[tuple[str, int]]) -> Node:
    root = Node("all")
    for stack, count in stacks:
        root.samples += count
        node = root
        frames = [frame for frame in stack.split(";") if not frame.split(" (")[0].endswith(WRAPPERS)]
        for frame in frames[:MAX_DEPTH]:
            node = node.children.setdefault(frame, Node(frame))
            node.samples += count
    return root


def _depth(node: Node) -> int:
    return 1 + max((_depth(child) for child in node.children.values()), default=0)


def _colour(name: str) -> str:
    hue = zlib.crc32(name.split(" (")[0].encode()) % 360
    if "torch" in name or "modeling_" in name or "transformers" in name:
        return f"hsl({20 + hue % 30}, 80%, 62%)"  # the model's own compute: warm
    return f"hsl({180 + hue % 60}, 55%, 68%)"  # everything around it: cool


def svg(stacks: Iterable[tuple[str, int]], title: str) -> str:
    root = tree(stacks)
    depth = _depth(root)
    height = (depth + 2) * ROW
    scale = WIDTH / max(root.samples, 1)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'font-family="monospace" font-size="{FONT}">',
        f'<rect width="{WIDTH}" height="{height}" fill="#fafafa"/>',
        f'<text x="4" y="{ROW - 4}" font-size="{FONT + 2}">{html.escape(title)}</text>',
    ]

    def draw(node: Node, x: float, level: int) -> None:
        width = node.samples * scale
        if width < MIN_WIDTH_PX:
            return
        y = height - (level + 1) * ROW
        share = 100.0 * node.samples / max(root.samples, 1)
        label = html.escape(node.name)
        out.append(
            f"<g><title>{label} — {node.samples} samples, {share:.1f} %</title>"
            f'<rect x="{x:.1f}" y="{y}" width="{width:.1f}" height="{ROW - 1}" fill="{_colour(node.name)}"/>'
        )
        chars = int(width / (FONT * 0.6))
        if chars >= 3:
            text = node.name if len(node.name) <= chars else node.name[: chars - 2] + ".."
            out.append(f'<text x="{x + 2:.1f}" y="{y + ROW - 5}">{html.escape(text)}</text>')
        out.append("</g>")
        child_x = x
        for child in sorted(node.children.values(), key=lambda child: child.name):
            draw(child, child_x, level + 1)
            child_x += child.samples * scale

    draw(root, 0.0, 0)
    out.append("</svg>")
    return "\n".join(out) + "\n"
