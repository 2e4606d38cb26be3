"""The checkpoint's tokenizer for /tokenize, /detokenize and vLLM-format truncation, loaded from its
``tokenizer.json`` with the ``tokenizers`` library (no transformers, no torch)."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer


class GatewayTokenizer:
    def __init__(self, model_path: str | Path):
        path = Path(model_path) / "tokenizer.json"
        self.path = path
        self._tokenizer = Tokenizer.from_file(str(path))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def tokens(self, ids: list[int]) -> list[str]:
        return [self._tokenizer.id_to_token(token) or "" for token in ids]

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)
