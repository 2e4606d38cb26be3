"""The conversation text the official Qwen3-VL embedder feeds its processor, built directly.

The official code renders the checkpoint's chat template and then lets `Qwen3VLProcessor` expand the vision
placeholders. We build the same string here (one `<|image_pad|>` per image, one `<|video_pad|>` per
2-frame group) and expand the pad tokens after tokenisation, which gives identical ids (pad tokens are
special tokens, so text around them tokenises the same) without tokenising thousands of pad strings.
`tests/unit/test_chat.py` checks the string against the tiny checkpoint's own chat template.
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


def normalize_instruction(instruction: str | None, default: str = DEFAULT_EMBEDDING_INSTRUCTION) -> str:
    """Strip the instruction and end it with punctuation, as the official embedder does; empty -> default."""
    if instruction:
        instruction = instruction.strip()
        if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
            instruction += "."
    return instruction or default


def video_placeholder(timestamps: Sequence[float]) -> str:
    """One `<t seconds>` + vision block per temporal group (4.57.3 / official layout)."""
    return "".join(f"<{seconds:.1f} seconds>{VISION_START}{VIDEO_PAD}{VISION_END}" for seconds in timestamps)


def image_placeholder() -> str:
    return f"{VISION_START}{IMAGE_PAD}{VISION_END}"


def user_content(text: str | None, image_count: int, video_timestamps: Sequence[Sequence[float]]) -> str:
    """The user turn's body in the official order: videos, then images, then text."""
    parts = [video_placeholder(timestamps) for timestamps in video_timestamps]
    parts.extend(image_placeholder() for _ in range(image_count))
    if text is not None:
        parts.append(text)
    return "".join(parts)


def embedding_prompt(
    instruction: str,
    text: str | None,
    image_count: int = 0,
    video_timestamps: Sequence[Sequence[float]] = (),
) -> str:
    """System = instruction (already normalised), user = content, then the assistant generation prompt."""
    return (
        f"{IM_START}system\n{instruction}{IM_END}\n"
        f"{IM_START}user\n{user_content(text, image_count, video_timestamps)}{IM_END}\n"
        f"{IM_START}assistant\n"
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


def rerank_prompt(instruction: str, query: PromptSide, document: PromptSide) -> str:
    """The official reranker's conversation: fixed system prompt, then
    `<Instruct>: {instruction}<Query>:{query}\\n<Document>:{document}` (the instruction is used as given,
    not punctuated), then the assistant generation prompt."""
    query_body = user_content(query.text, query.image_count, query.video_timestamps)
    document_body = user_content(document.text, document.image_count, document.video_timestamps)
    return (
        f"{IM_START}system\n{RERANK_SYSTEM_PROMPT}{IM_END}\n"
        f"{IM_START}user\n<Instruct>: {instruction}<Query>:{query_body}\n<Document>:{document_body}{IM_END}\n"
        f"{IM_START}assistant\n"
    )
