"""perf_analyzer `--input-data` files for the embedding and reranker ensembles, generated deterministically.

    python -m perf.lib.workloads [--out perf/data] [--only text_200,image_448] [--rows text_200=1000]
        [--force]

Every workload is a JSON file `{"data": [entry, ...]}` where each entry is one batch-1 request to the
ensemble the workload targets (`Workload.model`: `qwen3_vl_embedding`, or `qwen3_vl_reranker` for
rerank_200; perf_analyzer cycles through the entries). Nothing here is hand-written:
texts are random token ids of the model's own tokenizer, media come from `tools.synthetic`, all from
fixed seeds, so the same command gives the same bytes. The files (a few MB of base64 media) are written at
run time into `perf/data/` (git-ignored) next to a manifest that records how they were made; a file whose
recipe has not changed is reused.

Workloads:
  text_200    the vLLM-Ascend tutorial's benchmark (`vllm bench serve --dataset-name random
              --random-input 200`): 1,000 texts of exactly 200 tokens of random vocabulary, as counted by
              the model's tokenizer on the TEXT alone, documents' default instruction
  text_mixed  long-tailed lengths (8...2,048 tokens, median ~130); 30 % are short queries carrying a task
              instruction, the rest documents with the default one
  image_448   one 448x448 photo-like JPEG + a short caption per request
  screenshot  one 1280x720 rendered UI / document page (PNG) per request
  video       one 8 s H.264 clip, 320x240, 24 fps per request
  mixed       text-only, photo+caption and screenshot+question rows interleaved
  rerank_200  the vLLM-Ascend reranker tutorial's benchmark (random 200-token pairs, reported 72.99 req/s
              for the 8B): 1,000 (query, document) pairs to `qwen3_vl_reranker`, QUERY_TEXT and
              DOCUMENT_TEXT exactly 100 tokens each of random vocabulary (200 per pair, as text_200 per
              request), default instruction
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from backend.protocol import EMBEDDING_ENSEMBLE, RERANKER_ENSEMBLE
from perf.lib.console import command_parser
from perf.lib.paths import REPO

DEFAULT_OUT = REPO / "perf" / "data"
DEFAULT_TOKENIZER = REPO / "models" / "qwen3-vl-embedding-tiny"
# Bump when a generator changes what it writes, so cached files are rebuilt.
RECIPE_VERSION = 1

# Ids below this are ordinary byte-level BPE tokens; the rest are the added special tokens.
BPE_VOCAB_SIZE = 151643
TEXT_200_TOKENS = 200
# rerank_200's 200 tokens per pair: query + document, each counted alone like text_200's TEXT.
RERANK_QUERY_TOKENS = 100
RERANK_DOCUMENT_TOKENS = 100
QUERY_TASKS = (
    "Given a web search query, retrieve relevant passages that answer the query",
    "Retrieve images or text relevant to the user's query",
    "Given a question, retrieve documents that can help answer the question",
    "Find the screenshot that matches the description",
)
CAPTIONS = (
    "a photo",
    "an outdoor scene with colourful shapes",
    "a picture taken at sunset",
    "abstract shapes over a gradient",
)
SCREEN_QUESTIONS = (
    "What does this dashboard show?",
    "Quarterly report overview page",
    "Which actions are available on this page?",
)


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    rows: int
    build: Callable[[Generator, int], list[dict]]
    uses_tokenizer: bool = False
    model: str = EMBEDDING_ENSEMBLE  # the ensemble perf_analyzer sends the requests to


# ----------------------------------------------------------------------------------------------------------
# perf_analyzer JSON entries
# ----------------------------------------------------------------------------------------------------------


def text_tensor(value: str) -> dict:
    return {"content": [value], "shape": [1]}


def bytes_tensor(blob: bytes) -> dict:
    """A BYTES [1] input holding one binary element. perf_analyzer takes `b64` data as the tensor's raw
    bytes, and a BYTES tensor's raw form is each element prefixed by its uint32 little-endian length."""
    raw = len(blob).to_bytes(4, "little") + blob
    return {"b64": base64.b64encode(raw).decode("ascii"), "shape": [1]}


def decode_bytes_tensor(tensor: dict) -> bytes:
    """The element of a `bytes_tensor` (tests and the manifest use it)."""
    raw = base64.b64decode(tensor["b64"])
    length = int.from_bytes(raw[:4], "little")
    if length != len(raw) - 4:
        raise ValueError(f"BYTES element says {length} bytes, has {len(raw) - 4}")
    return raw[4:]


# ----------------------------------------------------------------------------------------------------------
# Text of an exact token length
# ----------------------------------------------------------------------------------------------------------


class Generator:
    """Deterministic text and media for the workloads; the tokenizer is loaded only when a text needs it."""

    def __init__(self, tokenizer_path: Path | str = DEFAULT_TOKENIZER):
        self.tokenizer_path = Path(tokenizer_path)

    @cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # fix_mistral_regex=False only silences a false warning of transformers 4.57.3 (see tokenization.py).
        return AutoTokenizer.from_pretrained(str(self.tokenizer_path), fix_mistral_regex=False)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @cached_property
    def word_ids(self) -> np.ndarray:
        """Ids of tokens that decode to ' <lowercase word>': text that reads like prose, not line noise."""
        pattern = re.compile(r"^ [a-z]{2,12}$")
        ids = [
            token_id for token_id in range(BPE_VOCAB_SIZE) if pattern.match(self.tokenizer.decode([token_id]))
        ]
        return np.array(ids, dtype=np.int64)

    def exact_length_text(
        self, rng: np.random.Generator, length: int, vocabulary: np.ndarray | None = None
    ) -> str:
        """A text of exactly `length` tokens when re-encoded by the model's tokenizer.

        As `vllm bench serve --dataset-name random` does: draw random token ids, decode them, re-encode the
        text; decode/encode is not a round trip (neighbouring tokens merge, split bytes become U+FFFD), so
        the re-encoded ids are cut or topped up and the text re-made until its length is exact; a draw that
        does not settle within a few rounds is abandoned for a fresh one."""
        if length < 1:
            raise ValueError("length must be at least 1")

        def draw(count: int) -> list[int]:
            if vocabulary is None:
                return rng.integers(0, BPE_VOCAB_SIZE, count).tolist()
            return vocabulary[rng.integers(0, len(vocabulary), count)].tolist()

        for _ in range(50):
            ids = draw(length)
            for _ in range(10):
                text = self.tokenizer.decode(ids)
                encoded = self.tokenizer(text, add_special_tokens=False)["input_ids"]
                if len(encoded) == length and max(encoded) < BPE_VOCAB_SIZE:
                    return text
                ids = encoded[:length] if len(encoded) > length else encoded + draw(length - len(encoded))
                ids = [token for token in ids if token < BPE_VOCAB_SIZE] or draw(length)
        raise RuntimeError(f"no text of exactly {length} tokens after 50 draws")


def mixed_lengths(rng: np.random.Generator, count: int) -> list[int]:
    """Long-tailed document lengths: log-normal, median 128 tokens, clipped to 8...2,048."""
    lengths = np.exp(rng.normal(np.log(128), 1.0, size=count))
    return [int(v) for v in np.clip(np.round(lengths), 8, 2048)]


# ----------------------------------------------------------------------------------------------------------
# Workload builders
# ----------------------------------------------------------------------------------------------------------


def build_text_200(gen: Generator, rows: int) -> list[dict]:
    rng = np.random.default_rng(200)
    return [{"TEXT": text_tensor(gen.exact_length_text(rng, TEXT_200_TOKENS))} for _ in range(rows)]


def build_rerank_200(gen: Generator, rows: int) -> list[dict]:
    """(query, document) pairs of random vocabulary, exactly 100 + 100 tokens, no INSTRUCTION (default)."""
    rng = np.random.default_rng(201)
    return [
        {
            "QUERY_TEXT": text_tensor(gen.exact_length_text(rng, RERANK_QUERY_TOKENS)),
            "DOCUMENT_TEXT": text_tensor(gen.exact_length_text(rng, RERANK_DOCUMENT_TOKENS)),
        }
        for _ in range(rows)
    ]


def build_text_mixed(gen: Generator, rows: int) -> list[dict]:
    rng = np.random.default_rng(2048)
    entries = []
    for length in mixed_lengths(rng, rows):
        if rng.random() < 0.3:  # a query: short, with its task
            text = gen.exact_length_text(rng, int(rng.integers(8, 49)), gen.word_ids)
            instruction = QUERY_TASKS[int(rng.integers(len(QUERY_TASKS)))]
        else:  # a document: empty INSTRUCTION = the default "Represent the user's input."
            text = gen.exact_length_text(rng, length, gen.word_ids)
            instruction = ""
        entries.append({"TEXT": text_tensor(text), "INSTRUCTION": text_tensor(instruction)})
    return entries


def _photos(count: int) -> list[bytes]:
    from tools import synthetic

    return [
        synthetic.encode_image(synthetic.photo(448, 448, seed=1000 + index), "JPEG", quality=90)
        for index in range(count)
    ]


def _screenshots(count: int) -> list[bytes]:
    from tools import synthetic

    return [
        synthetic.encode_image(synthetic.screenshot(1280, 720, seed=2000 + index)) for index in range(count)
    ]


def build_image_448(gen: Generator, rows: int) -> list[dict]:
    return [
        {"IMAGE": bytes_tensor(photo), "TEXT": text_tensor(CAPTIONS[index % len(CAPTIONS)])}
        for index, photo in enumerate(_photos(rows))
    ]


def build_screenshot(gen: Generator, rows: int) -> list[dict]:
    return [{"IMAGE": bytes_tensor(page)} for page in _screenshots(rows)]


def build_video(gen: Generator, rows: int) -> list[dict]:
    from tools import synthetic

    return [
        {"VIDEO": bytes_tensor(synthetic.video(seconds=8, fps=24, width=320, height=240, seed=3000 + index))}
        for index in range(rows)
    ]


def build_mixed(gen: Generator, rows: int) -> list[dict]:
    """Every entry has TEXT and IMAGE (perf_analyzer sends the same inputs each time); a text-only row's
    IMAGE is one empty element, which the server ignores."""
    rng = np.random.default_rng(7)
    photos, pages = _photos(max(1, rows // 3)), _screenshots(max(1, rows // 6))
    entries = []
    for index in range(rows):
        kind = index % 3
        if kind == 0:
            text = gen.exact_length_text(rng, mixed_lengths(rng, 1)[0], gen.word_ids)
            entries.append({"TEXT": text_tensor(text), "IMAGE": bytes_tensor(b"")})
        elif kind == 1:
            caption = CAPTIONS[index % len(CAPTIONS)]
            entries.append({"TEXT": text_tensor(caption), "IMAGE": bytes_tensor(photos[index % len(photos)])})
        else:
            question = SCREEN_QUESTIONS[index % len(SCREEN_QUESTIONS)]
            entries.append({"TEXT": text_tensor(question), "IMAGE": bytes_tensor(pages[index % len(pages)])})
    return entries


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "text_200",
            "200 random-vocabulary tokens per text (vLLM bench random)",
            1000,
            build_text_200,
            True,
        ),
        Workload(
            "text_mixed",
            "8-2,048 tokens, long-tailed; 30 % queries with instruction",
            400,
            build_text_mixed,
            True,
        ),
        Workload("image_448", "448x448 photo JPEG + short caption", 16, build_image_448),
        Workload("screenshot", "1280x720 UI page PNG", 8, build_screenshot),
        Workload("video", "8 s H.264 320x240 24 fps", 4, build_video),
        Workload("mixed", "text-only, photo+caption, screenshot+question rows", 48, build_mixed, True),
        Workload(
            "rerank_200",
            "reranker pairs: 100 + 100 random-vocabulary tokens (query + document)",
            1000,
            build_rerank_200,
            True,
            RERANKER_ENSEMBLE,
        ),
    )
}


# ----------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------


def _recipe(workload: Workload, rows: int, gen: Generator) -> dict:
    recipe = {"workload": workload.name, "rows": rows, "version": RECIPE_VERSION}
    if workload.uses_tokenizer:
        tokenizer_file = gen.tokenizer_path / "tokenizer.json"
        recipe["tokenizer_sha256"] = hashlib.sha256(tokenizer_file.read_bytes()).hexdigest()[:16]
    return recipe


def path_for(name: str, out_dir: Path | str = DEFAULT_OUT, rows: int | None = None) -> Path:
    """`<name>.json` for the standard row count, `<name>-<rows>.json` otherwise (so a smoke test's short
    file never replaces the one a sweep is reading)."""
    if rows and rows != WORKLOADS[name].rows:
        return Path(out_dir) / f"{name}-{rows}.json"
    return Path(out_dir) / f"{name}.json"


def generate(
    name: str,
    out_dir: Path | str = DEFAULT_OUT,
    rows: int | None = None,
    gen: Generator | None = None,
    force: bool = False,
) -> Path:
    """Write `<out_dir>/<name>.json` (and its `.manifest.json`) unless an identical recipe is there."""
    workload = WORKLOADS[name]
    rows = rows or workload.rows
    gen = gen or Generator()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = path_for(name, out_dir, rows)
    manifest_path = path.with_suffix(".manifest.json")
    recipe = _recipe(workload, rows, gen)
    if not force and path.exists() and manifest_path.exists():
        if json.loads(manifest_path.read_text()).get("recipe") == recipe:
            return path
    entries = workload.build(gen, rows)
    text = json.dumps({"data": entries}, ensure_ascii=False, separators=(",", ":"))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    manifest = {
        "recipe": recipe,
        "description": workload.description,
        "entries": len(entries),
        "bytes": len(text.encode("utf-8")),
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }
    if workload.uses_tokenizer:
        counts = [
            gen.count_tokens(tensor["content"][0])
            for entry in entries
            for name, tensor in entry.items()
            if name in ("TEXT", "QUERY_TEXT", "DOCUMENT_TEXT")
        ]
        manifest["text_tokens"] = {"min": min(counts), "median": float(np.median(counts)), "max": max(counts)}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = command_parser("perf.lib.workloads", __doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workload names")
    parser.add_argument("--rows", action="append", default=[], help="NAME=N overrides a workload's row count")
    parser.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    rows = {key: int(value) for key, _, value in (item.partition("=") for item in args.rows)}
    gen = Generator(args.tokenizer)
    for name in args.only.split(","):
        path = generate(name, args.out, rows.get(name), gen, args.force)
        manifest = json.loads(path.with_suffix(".manifest.json").read_text())
        print(
            f"{path}: {manifest['entries']} requests, {manifest['bytes'] / 1e6:.2f} MB"
            + (f", tokens {manifest['text_tokens']}" if "text_tokens" in manifest else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
