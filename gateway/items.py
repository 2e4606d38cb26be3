"""Requests turned into ensemble rows: one ``Item`` per thing to embed or per side of a pair to score."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.errors import invalid
from gateway.media import MediaFetcher
from gateway.protocol import INT32_MAX, ContentPart, Conversation, EmbeddingRequest, ScoreContent, ScoreInput
from gateway.settings import InputFormat
from qwen3vl_client.items import Row

# The query convention of the vLLM tutorial and the Qwen3-VL-Embedding README.
_INSTRUCT_QUERY = re.compile(r"\AInstruct: ?(?P<task>.*?)\nQuery: ?(?P<query>.*)\Z", re.DOTALL)


@dataclass(frozen=True)
class Item:
    """One thing to embed, or one side of a pair to score, as the request gave it. ``raw`` items are
    vLLM's completion path: ``text`` (or ``token_ids``) as is, no chat format; official items get the
    instruction (None = the model's default) and the template."""

    text: str | None = None
    images: tuple[bytes, ...] = ()
    videos: tuple[bytes, ...] = ()
    instruction: str | None = None
    raw: bool = False
    token_ids: tuple[int, ...] | None = None

    def row(self, dimensions: int | None = None) -> Row:
        """The item as the client's wire carries it (``dimensions`` None = the model's full size)."""
        text, instruction = (self.text or "").encode(), (self.instruction or "").encode()
        return Row(text, self.images, self.videos, instruction, dimensions or 0, self.raw, self.token_ids)


def split_instruct_query(text: str) -> tuple[str | None, str]:
    """``Instruct: {task}\\nQuery: {query}`` -> (task, query); any other text -> (None, text)."""
    match = _INSTRUCT_QUERY.match(text)
    if not match:
        return None, text
    return match.group("task").strip() or None, match.group("query")


def input_items(request: EmbeddingRequest, input_format: InputFormat) -> list[Item]:
    """The ``input`` form: one item per string (or token list)."""
    value = request.input
    assert value is not None
    if isinstance(value, str):
        entries: list = [value]
    elif value and all(isinstance(token, int) for token in value):
        entries = [value]  # one list of token ids
    else:
        entries = list(value)
    if not entries:
        raise invalid("input is empty", param="input")
    raw = input_format == "vllm"
    if raw and request.instruction is not None:
        raise invalid(
            "instruction is not used with input_format 'vllm' (raw text, no template)", "instruction"
        )
    items = []
    for index, entry in enumerate(entries):
        if isinstance(entry, list):
            if not raw:
                raise invalid(
                    f"input[{index}] is a list of token ids: token ids are embedded only with "
                    "input_format 'vllm' (vLLM's raw completion path); send text for the official format",
                    param="input",
                )
            if not entry:
                raise invalid(f"input[{index}] is an empty list of token ids", param="input")
            if min(entry) < 0:
                raise invalid(f"input[{index}] has a negative token id", param="input")
            if max(entry) > INT32_MAX:
                raise invalid(f"input[{index}] has a token id over {INT32_MAX}", param="input")
            items.append(Item(raw=True, token_ids=tuple(entry)))
        elif raw:
            if not entry:
                raise invalid(f"input[{index}] is an empty string", param="input")
            items.append(Item(text=entry, raw=True))
        else:
            task, text = split_instruct_query(entry)
            if not text:
                raise invalid(f"input[{index}] is an empty string", param="input")
            items.append(Item(text=text, instruction=task or request.instruction))
    return items


async def _content_item(
    parts: list[ContentPart], fetcher: MediaFetcher, where: str
) -> tuple[list[str], list[bytes], list[bytes]]:
    texts: list[str] = []
    images: list[bytes] = []
    videos: list[bytes] = []
    for index, part in enumerate(parts):
        if part.kind == "text":
            texts.append(part.text or "")
            continue
        url = part.url
        if not url:
            raise invalid(f"{where}[{index}] has an empty URL", param=where.split("[", 1)[0])
        blob = await fetcher.fetch(url, f"{where}[{index}]")
        (images if part.kind == "image_url" else videos).append(blob)
    return texts, images, videos


async def conversation_item(conversation: Conversation, fetcher: MediaFetcher, where: str) -> Item:
    """A chat conversation as the official embedder takes it: system text = the instruction, the user
    turns' text, images and videos = the item (the backend orders them videos, images, text)."""
    system: list[str] = []
    texts: list[str] = []
    images: list[bytes] = []
    videos: list[bytes] = []
    if not conversation:
        raise invalid(f"{where} has no messages", param="messages")
    for index, message in enumerate(conversation):
        here = f"{where}[{index}].content"
        parts: tuple[list[str], list[bytes], list[bytes]]
        if isinstance(message.content, str):
            parts = [message.content], [], []
        else:
            parts = await _content_item(message.content, fetcher, here)
        parts_text, parts_images, parts_videos = parts
        if message.role in ("system", "developer"):
            if parts_images or parts_videos:
                raise invalid(f"{here}: a system message holds only text", param="messages")
            system.extend(parts_text)
        else:
            texts.extend(parts_text)
            images.extend(parts_images)
            videos.extend(parts_videos)
    text = "".join(texts)
    if not (text or images or videos):
        raise invalid(f"{where} has no user content: send text, image_url or video_url", param="messages")
    instruction = "\n".join(part for part in system if part) or None
    return Item(text=text or None, images=tuple(images), videos=tuple(videos), instruction=instruction)


async def message_items(request: EmbeddingRequest, fetcher: MediaFetcher) -> list[Item]:
    conversations = request.conversations()
    if not conversations:
        raise invalid("messages is empty", param="messages")
    several = len(conversations) > 1 or (request.messages and isinstance(request.messages[0], list))
    items = []
    for index, conversation in enumerate(conversations):
        item = await conversation_item(conversation, fetcher, f"messages[{index}]" if several else "messages")
        if request.instruction is not None:
            if item.instruction is not None:
                raise invalid(
                    f"messages[{index}] has a system message and the request an instruction: give one"
                )
            item = Item(item.text, item.images, item.videos, request.instruction)
        items.append(item)
    return items


async def score_item(value: ScoreInput, fetcher: MediaFetcher, where: str) -> Item:
    """A rerank/score side: a string, or ``{"content": [parts]}`` (all parts one item)."""
    if isinstance(value, str):
        if not value:
            raise invalid(f"{where} is an empty string", param=where.split("[", 1)[0])
        return Item(text=value)
    assert isinstance(value, ScoreContent)
    texts, images, videos = await _content_item(value.content, fetcher, f"{where}.content")
    text = "".join(texts)
    if not (text or images or videos):
        raise invalid(f"{where} has no content", param=where.split("[", 1)[0])
    return Item(text=text or None, images=tuple(images), videos=tuple(videos))
