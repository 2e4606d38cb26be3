"""Tokenising a prompt and expanding its vision pad tokens, as Qwen3VLProcessor does, then truncating."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from backend.errors import ConfigError, InputError
from backend.settings import RERANK_KEPT_TAIL
from backend.text.chat import IMAGE_PAD, VIDEO_PAD, Special

# Tokens beyond max_tokens a bounded prefix must settle: the prompt around the text may tokenise its first
# characters differently (a piece can start in the template), which moves the count by a token or two.
BOUNDED_MARGIN_TOKENS = 16


def truncate_keeping_special(
    ids: np.ndarray, max_length: int, special_ids: set[int], tail: int = RERANK_KEPT_TAIL
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

        self.vocab = vocab

    def ids(self, text: str) -> np.ndarray:
        """int64 ids of `text` as the checkpoint's tokenizer encodes it (special-token strings included)."""
        return np.asarray(self.tokenizer.encode(text).ids, dtype=np.int64)

    def plain_ids(self, text: str) -> list[int]:
        """Ids of user text in which special-token strings are plain text (see backend.text.chat)."""
        self.tokenizer.encode_special_tokens = True
        try:
            return self.tokenizer.encode(text).ids
        finally:
            self.tokenizer.encode_special_tokens = False

    def prompt_ids(self, prompt: str) -> np.ndarray:
        """A chat.Prompt's ids: the template's special tokens by id, everything between them as plain text.
        Equal to tokenising the whole string when the user text holds no special-token string, because the
        tokenizer splits a string at special tokens and encodes the pieces between them independently."""
        parts = getattr(prompt, "parts", None)
        if parts is None:
            return self.ids(prompt)
        ids: list[int] = []
        pending: list[str] = []
        for part in (*parts, None):
            if part is None or isinstance(part, Special):
                if pending:
                    ids.extend(self.plain_ids("".join(pending)))
                    pending = []
                if part is not None:
                    ids.append(self.vocab[part])
            else:
                pending.append(part)
        return np.asarray(ids, dtype=np.int64)

    def bounded(self, text: str, max_tokens: int) -> str:
        """`text`, or a prefix of it whose first `max_tokens` tokens are the whole text's first `max_tokens`.

        Truncation keeps at most max_length tokens of any one text, so a 10 MB text needs only its
        beginning tokenised (tokenising all of it took a minute). The tokenizer splits text into pre-token
        pieces (words, number runs, whitespace runs) by a regex and runs BPE inside each piece, so cutting the
        text changes only the last pieces; a prefix counts once the pieces before its last two hold enough
        tokens. The prefix grows by doubling from ~4 characters per token, so the work stays proportional to
        what is kept. A text that is one long piece (letters with no break) is tokenised whole: the
        `max_text_bytes` limit bounds that.
        """
        need = max_tokens + BOUNDED_MARGIN_TOKENS
        size = need * 4
        while size < len(text):
            prefix = text[:size]
            pieces = self.tokenizer.pre_tokenizer.pre_tokenize_str(prefix)
            if len(pieces) > 2:
                settled = prefix[: pieces[-2][1][0]]
                if len(self.plain_ids(settled)) >= need:
                    return prefix
            size *= 2
        return text

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
        ids = self.prompt_ids(prompt)
        repeats = np.ones(len(ids), dtype=np.int64)
        for pad_id, counts, what in (
            (self.image_pad_id, image_token_counts, "image"),
            (self.video_pad_id, video_group_token_counts, "video"),
        ):
            positions = np.flatnonzero(ids == pad_id)
            if len(positions) != len(counts):  # a plain-string prompt whose text holds a pad token
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
