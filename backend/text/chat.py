"""The conversation text the official Qwen3-VL embedder feeds its processor, built directly.

The official code renders the checkpoint's chat template and then lets `Qwen3VLProcessor` expand the vision
placeholders. We build the same string here (one `<|image_pad|>` per image, one `<|video_pad|>` per
2-frame group) and expand the pad tokens after tokenisation, which gives identical ids (pad tokens are
special tokens, so text around them tokenises the same) without tokenising thousands of pad strings.
`tests/unit/test_chat.py` checks the string against the tiny checkpoint's own chat template.

A prompt also records which special tokens the template put there (`Prompt.parts`): only those become
special ids. Special-token strings inside user text (`<|im_start|>`, `<|image_pad|>`, ...) are tokenised as
the plain text they are, so no input can forge a turn, a placeholder, or a reranker prompt whose truncation
must keep thousands of "special" tokens. (The official code would treat them as control tokens.)
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from backend.protocol import DEFAULT_EMBEDDING_INSTRUCTION

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"


class Special(str):
    """A special token the template itself puts into the prompt."""


class Prompt(str):
    """The prompt text; `parts` is the same text as template special tokens (`Special`) and plain strings."""

    parts: tuple[str, ...]

    def __new__(cls, parts: Sequence[str]) -> Prompt:
        prompt = super().__new__(cls, "".join(parts))
        prompt.parts = tuple(parts)
        return prompt


def _turn(role: str, *body: str) -> list[str]:
    return [Special(IM_START), f"{role}\n", *body, Special(IM_END), "\n"]


GENERATION_PROMPT = (Special(IM_START), "assistant\n")


def normalize_instruction(instruction: str | None, default: str = DEFAULT_EMBEDDING_INSTRUCTION) -> str:
    """Strip the instruction and end it with punctuation, as the official embedder does; empty -> default."""
    if instruction:
        instruction = instruction.strip()
        if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
            instruction += "."
    return instruction or default


def video_placeholder(timestamps: Sequence[float]) -> list[str]:
    """One `<t seconds>` + vision block per temporal group (4.57.3 / official layout)."""
    parts: list[str] = []
    for seconds in timestamps:
        parts += [f"<{seconds:.1f} seconds>", Special(VISION_START), Special(VIDEO_PAD), Special(VISION_END)]
    return parts


def image_placeholder() -> list[str]:
    return [Special(VISION_START), Special(IMAGE_PAD), Special(VISION_END)]


def user_content(
    text: str | None, image_count: int, video_timestamps: Sequence[Sequence[float]]
) -> list[str]:
    """The user turn's body in the official order: videos, then images, then text."""
    parts = [part for timestamps in video_timestamps for part in video_placeholder(timestamps)]
    parts.extend(part for _ in range(image_count) for part in image_placeholder())
    if text is not None:
        parts.append(text)
    return parts


def embedding_prompt(
    instruction: str,
    text: str | None,
    image_count: int = 0,
    video_timestamps: Sequence[Sequence[float]] = (),
) -> Prompt:
    """System = instruction (already normalised), user = content, then the assistant generation prompt."""
    return Prompt(
        [
            *_turn("system", instruction),
            *_turn("user", *user_content(text, image_count, video_timestamps)),
            *GENERATION_PROMPT,
        ]
    )


RERANK_SYSTEM_PROMPT = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)


@dataclass(frozen=True)
class PromptSide:
    """One side of a rerank pair as the prompt needs it: text plus how many images / which video groups."""

    text: str | None = None
    image_count: int = 0
    video_timestamps: Sequence[Sequence[float]] = ()


def rerank_prompt(instruction: str, query: PromptSide, document: PromptSide) -> Prompt:
    """The official reranker's conversation: fixed system prompt, then
    `<Instruct>: {instruction}<Query>:{query}\\n<Document>:{document}` (the instruction is used as given,
    not punctuated), then the assistant generation prompt."""
    query_body = user_content(query.text, query.image_count, query.video_timestamps)
    document_body = user_content(document.text, document.image_count, document.video_timestamps)
    user = ["<Instruct>: ", instruction, "<Query>:", *query_body, "\n<Document>:", *document_body]
    return Prompt([*_turn("system", RERANK_SYSTEM_PROMPT), *_turn("user", *user), *GENERATION_PROMPT])
