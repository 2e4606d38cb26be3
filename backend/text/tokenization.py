"""Tokenising a prompt and expanding its vision pad tokens, as Qwen3VLProcessor does, then truncating."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from backend.chat import IMAGE_PAD, VIDEO_PAD
from backend.errors import ConfigError, InputError


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


class PromptTokenizer:
    """The checkpoint's tokenizer plus the ids the vision placeholders need."""

    def __init__(self, model_path: str):
        from transformers import AutoTokenizer

        try:
            # fix_mistral_regex=False: 4.57.3 mistakes any local checkpoint saved by 4.57.3 for a Mistral one
            # and warns about its (correct, Qwen) regex; the flag only silences that check.
            self.tokenizer = AutoTokenizer.from_pretrained(model_path, fix_mistral_regex=False)
        except Exception as error:
            raise ConfigError(f"cannot load the tokenizer from {model_path!r}: {error}") from error
        vocab = self.tokenizer.get_vocab()
        missing = [token for token in (IMAGE_PAD, VIDEO_PAD, "<|endoftext|>") if token not in vocab]
        if missing:
            raise ConfigError(f"tokenizer at {model_path!r} lacks the Qwen3-VL tokens {missing}")
        self.special_ids = set(self.tokenizer.all_special_ids)
        self.image_pad_id = vocab[IMAGE_PAD]
        self.video_pad_id = vocab[VIDEO_PAD]
        # Qwen3-VL pads with <|endoftext|>; the value is irrelevant to the result (masked out), not to speed.
        self.pad_token_id = (
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else vocab["<|endoftext|>"]
        )

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
        ids = np.asarray(self.tokenizer(prompt)["input_ids"], dtype=np.int64)
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
