"""Tokenising a prompt and expanding its vision pad tokens, as Qwen3VLProcessor does, then truncating."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from backend.errors import ConfigError, InputError
from backend.text.chat import IMAGE_PAD, VIDEO_PAD


def truncate_keeping_special(
    ids: np.ndarray, max_length: int, special_ids: set[int], tail: int = 5
) -> np.ndarray:
    """The official reranker's truncation: the last `tail` tokens (the end of the user turn and the
    assistant prompt) always stay; of the rest, every special token (vision pads included) stays and
    ordinary tokens are kept from the start until `max_length` tokens are reached."""
    head, end = ids[:-tail], ids[-tail:]
    if len(head) <= max_length:
        return ids
    special = np.isin(head, list(special_ids))
    ordinary_budget = max_length - int(special.sum())
    keep = special | (np.cumsum(~special) <= ordinary_budget)
    return np.concatenate([head[keep], end])


def _token_content(value: object) -> str | None:
    """tokenizer_config.json names a token as a string or as an AddedToken-like dict."""
    return value.get("content") if isinstance(value, dict) else value  # type: ignore[return-value]


class PromptTokenizer:
    """The checkpoint's tokenizer (tokenizer.json through the `tokenizers` library, so the preprocess step
    never loads transformers or torch) plus the ids the vision placeholders need. Ids equal
    `AutoTokenizer.from_pretrained(path)(text)["input_ids"]` (checked in the tests): Qwen's tokenizer adds no
    BOS/EOS, and its normaliser, pre-tokeniser and added tokens all live in tokenizer.json."""

    def __init__(self, model_path: str):
        from tokenizers import Tokenizer

        directory = Path(model_path)
        try:
            self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        except Exception as error:
            raise ConfigError(f"cannot load the tokenizer from {model_path!r}: {error}") from error
        try:
            config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}
        vocab = self.tokenizer.get_vocab(with_added_tokens=True)
        missing = [token for token in (IMAGE_PAD, VIDEO_PAD, "<|endoftext|>") if token not in vocab]
        if missing:
            raise ConfigError(f"tokenizer at {model_path!r} lacks the Qwen3-VL tokens {missing}")
        added = self.tokenizer.get_added_tokens_decoder()
        named = [
            _token_content(config.get(key)) for key in ("eos_token", "pad_token", "bos_token", "unk_token")
        ]
        self.special_ids = {token_id for token_id, token in added.items() if token.special} | {
            vocab[name] for name in named if name in vocab
        }
        self.image_pad_id = vocab[IMAGE_PAD]
        self.video_pad_id = vocab[VIDEO_PAD]
        # Qwen3-VL pads with <|endoftext|>; the value is irrelevant to the result (masked out), not to speed.
        self.pad_token_id = vocab.get(_token_content(config.get("pad_token")) or "", vocab["<|endoftext|>"])

    def ids(self, text: str) -> np.ndarray:
        """int64 ids of `text` as the checkpoint's tokenizer encodes it (special-token strings included)."""
        return np.asarray(self.tokenizer.encode(text).ids, dtype=np.int64)

    def encode(
        self,
        prompt: str,
        image_token_counts: Sequence[int] = (),
        video_group_token_counts: Sequence[int] = (),
        max_length: int | None = None,
    ) -> np.ndarray:
        """int64 ids of `prompt` with each image pad repeated to its image's token count and each video pad
        to its 2-frame group's token count; then right-truncated to `max_length` like the official call
        (`truncation=True, max_length=...`). Truncation that would cut vision tokens is an InputError: the
        official pipeline fails there too, with a much less helpful message."""
        ids = self.ids(prompt)
        repeats = np.ones(len(ids), dtype=np.int64)
        for pad_id, counts, what in (
            (self.image_pad_id, image_token_counts, "image"),
            (self.video_pad_id, video_group_token_counts, "video"),
        ):
            positions = np.flatnonzero(ids == pad_id)
            if len(positions) != len(counts):
                raise InputError(
                    f"text contains the reserved {what} placeholder token "
                    f"{IMAGE_PAD if what == 'image' else VIDEO_PAD}; remove it from the text"
                )
            repeats[positions] = counts
        expanded = np.repeat(ids, repeats)
        if max_length is not None and len(expanded) > max_length:
            cut = expanded[max_length:]
            if np.isin(cut, (self.image_pad_id, self.video_pad_id)).any():
                raise InputError(
                    f"item needs {len(expanded)} tokens once its images/videos are expanded, over max_length "
                    f"{max_length}; send smaller images, shorter videos or fewer of them"
                )
            expanded = expanded[:max_length]
        return expanded
