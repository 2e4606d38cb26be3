"""The request contract in one place: tensor names, typed records, request parsing, Matryoshka bounds.

The public contract is the ensembles' (one batch row = one item, or one (query, document) pair); the wire
contract is what the preprocess step hands the model step (`backend.wire` packs and unpacks it). Every layer
passes the records defined here. The error grammar the client parses lives beside the error kinds, in
`backend.errors`. Nothing here imports torch, PIL or a tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from backend.errors import InputError

# --- names --------------------------------------------------------------------------------------------

EMBEDDING_ENSEMBLE = "qwen3_vl_embedding"
RERANKER_ENSEMBLE = "qwen3_vl_reranker"

DEFAULT_EMBEDDING_INSTRUCTION = "Represent the user's input."
DEFAULT_RERANK_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."

# Public inputs of the embedding ensemble. RAW (BOOL) embeds TEXT or TOKEN_IDS as vLLM's completion path
# does: the raw tokens, no chat template, no instruction.
EMBEDDING_INPUTS = ("TEXT", "IMAGE", "VIDEO", "INSTRUCTION", "DIMENSIONS", "RAW", "TOKEN_IDS")
EMBEDDING_OUTPUT = "EMBEDDING"
RERANK_SIDES = ("QUERY", "DOCUMENT")
RERANK_INPUTS = (
    *(f"{side}_{kind}" for side in RERANK_SIDES for kind in ("TEXT", "IMAGE", "VIDEO")),
    "INSTRUCTION",
)
SCORE_OUTPUT = "SCORE"
# Both ensembles: tokens the model ran for each row, vision placeholders included (the gateway's usage).
TOKEN_COUNT_OUTPUT = "TOKEN_COUNT"

# When the preprocess step handed a request on (time.monotonic_ns(): one clock for every process of the
# host): the model step refuses a request that waited in its queue longer than its queue_timeout_seconds.
QUEUED_AT = "QUEUED_AT"
# Preprocess -> model step (backend.wire has the shapes).
MODEL_INPUTS = (
    "INPUT_IDS",
    "SEQ_LEN",
    "EMBED_DIM",
    "IMAGE_PATCHES",
    "IMAGE_GRID_THW",
    "VIDEO_PATCHES",
    "VIDEO_GRID_THW",
    QUEUED_AT,
)
# Compact vectors (backend.vectors): optional inputs of the embedding ensemble that go straight to its model
# step (not through the preprocess step), and the output each compact type comes back in.
EMBEDDING_TYPES_INPUT = "EMBEDDING_TYPES"
EMBEDDING_RANGE_INPUT = "EMBEDDING_RANGE"
COMPACT_INPUTS = (EMBEDDING_TYPES_INPUT, EMBEDDING_RANGE_INPUT)
COMPACT_OUTPUTS = {
    "float16": "EMBEDDING_FP16",
    "int8": "EMBEDDING_INT8",
    "uint8": "EMBEDDING_UINT8",
    "binary": "EMBEDDING_BINARY",
    "ubinary": "EMBEDDING_UBINARY",
}

# Priority classes. Bulk work (an indexing job's) is marked twice, both by the client library: by the request
# parameter PRIORITY_PARAMETER = BULK_CLASS, which Triton's ensembles hand to both steps and the model step
# reads (request.parameters(): the Python backend of Triton 2.51 cannot read a request's `priority`), and
# by Triton's request `priority` TRITON_PRIORITY[class], which orders Triton's queue in front of the
# preprocess steps (priority_levels: 2, default_priority_level: 1: unmarked requests are interactive).
PRIORITY_PARAMETER = "priority_class"
INTERACTIVE_CLASS = "interactive"
BULK_CLASS = "bulk"
TRITON_PRIORITY = {INTERACTIVE_CLASS: 1, BULK_CLASS: 2}

# --- vision geometry (shared by the preprocess step, the wire and the model step) -------------------

PATCH_SIZE = 16
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
PATCH_WIDTH = 3 * TEMPORAL_PATCH_SIZE * PATCH_SIZE * PATCH_SIZE  # uint8 values per flattened patch

# --- Matryoshka -----------------------------------------------------------------------------------------

MIN_DIMENSIONS = 64


def check_dimensions(dimensions: int, hidden_size: int, name: str = "DIMENSIONS") -> int:
    """0 (= full) or a Matryoshka size in MIN_DIMENSIONS..hidden_size; the one check both steps run."""
    if dimensions != 0 and not MIN_DIMENSIONS <= dimensions <= hidden_size:
        raise InputError(f"must be between {MIN_DIMENSIONS} and {hidden_size}, got {dimensions}", input=name)
    return dimensions


def check_text_bytes(text: str | None, limit: int, name: str) -> str | None:
    """Text inputs are bounded before anything tokenises them."""
    if text is not None and len(text) > limit // 4 and len(text.encode("utf-8")) > limit:
        raise InputError(f"{len(text.encode('utf-8'))} bytes, over the limit of {limit} bytes", input=name)
    return text


# --- records --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VisionPatches:
    """Flattened patches of one image or video: uint8 [grid_t*grid_h*grid_w, PATCH_WIDTH] and its grid."""

    patches: np.ndarray
    grid_thw: tuple[int, int, int]

    @property
    def token_count(self) -> int:
        t, h, w = self.grid_thw
        return t * h * w // (MERGE_SIZE * MERGE_SIZE)


@dataclass(frozen=True)
class EmbeddingItem:
    """One batch row of the embedding contract: any mix of text, images and videos, plus options."""

    text: str | None = None
    images: tuple[bytes, ...] = ()
    videos: tuple[bytes, ...] = ()
    instruction: str | None = None
    dimensions: int = 0  # 0 = the model's full hidden size
    raw: bool = False  # vLLM's completion path: raw tokens of `text` (or `token_ids`), no template
    token_ids: tuple[int, ...] = ()

    @property
    def has_content(self) -> bool:
        return bool(self.text) or bool(self.images) or bool(self.videos) or bool(self.token_ids)


@dataclass(frozen=True)
class PairSide:
    """The query or the document of a rerank pair."""

    text: str | None = None
    images: tuple[bytes, ...] = ()
    videos: tuple[bytes, ...] = ()

    @property
    def has_content(self) -> bool:
        return bool(self.text) or bool(self.images) or bool(self.videos)


@dataclass(frozen=True)
class RerankPair:
    """One batch row of the reranker contract."""

    query: PairSide
    document: PairSide
    instruction: str | None = None


@dataclass(frozen=True)
class PreparedItem:
    """One row ready for the model: token ids and the vision patches its placeholder tokens stand for."""

    input_ids: np.ndarray  # int64 [L]
    images: tuple[VisionPatches, ...] = ()
    videos: tuple[VisionPatches, ...] = ()
    dimensions: int = 0
    # Compact copies of the vector the request asks for (backend.vectors; the same for all its rows), and
    # this row's int8/uint8 range (0 = the documented default). The reranker leaves both empty.
    vector_types: tuple[str, ...] = ()
    vector_range: float = 0.0

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def vision_patch_count(self) -> int:
        return sum(int(v.patches.shape[0]) for v in self.images) + sum(
            int(v.patches.shape[0]) for v in self.videos
        )


def token_counts(rows: Sequence[PreparedItem]) -> np.ndarray:
    """INT32 [B, 1]: the tokens each row ran, vision placeholders included (TOKEN_COUNT_OUTPUT)."""
    return np.array([[row.length] for row in rows], dtype=np.int32)


# --- parsing request tensors ------------------------------------------------------------------------------

# A request's tensors by name (None: an optional input it left out), as every step reads them.
Tensors = Mapping[str, "np.ndarray | None"]
# What a step answers for one request: its output tensors, or the exception that fails that request alone.
Result = dict[str, np.ndarray] | Exception


def decode_text(value: object, name: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as error:
            raise InputError(f"not valid UTF-8 ({error.reason} at byte {error.start})", input=name) from None
    raise InputError(f"must be BYTES, got {type(value).__name__}", input=name)


def row_blobs(values: np.ndarray | None, row: int) -> tuple[bytes, ...]:
    """Non-empty encoded files of one row; empty elements pad ragged rows and are ignored."""
    if values is None:
        return ()
    return tuple(
        bytes(v) for v in np.asarray(values[row], dtype=object).reshape(-1) if v is not None and len(v)
    )


def row_scalar(values: np.ndarray | None, row: int, name: str):
    if values is None:
        return None
    flat = np.asarray(values[row]).reshape(-1)
    if flat.size != 1:
        raise InputError(f"expected one value per row, got {flat.size}", input=name)
    return flat[0]


def row_text(inputs: Tensors, name: str, row: int) -> str | None:
    value = row_scalar(inputs.get(name), row, name)
    return None if value is None else (decode_text(value, name) or None)


# Every public input of both ensembles is [batch, n] (config.pbtxt dims [1] or [-1], batch first).
PUBLIC_INPUT_RANK = 2
# Triton 2.51 keeps a request's batch dimension modulo 2^32 (PLATFORM.md): a client claiming 2^40 rows
# reaches a step as a batch of 0, its tensors without their batch dimension. Counting the dimensions is the
# only trace of such a request a step sees, and costs nothing whatever size was claimed.
WRAPPED_BATCH_HINT = "a batch size of 0 or of 2^32 and more arrives without its batch dimension"


def check_rank(value: np.ndarray, rank: int, name: str) -> None:
    if value.ndim != rank:
        raise InputError(
            f"expected {rank} dimensions, the batch dimension first, got shape {list(value.shape)} "
            f"({WRAPPED_BATCH_HINT})",
            input=name,
        )


def batch_size_of(inputs: Tensors, ranks: Mapping[str, int] | None = None) -> int:
    """The request's batch size, once every present input has its rank (`ranks`: by name, default
    PUBLIC_INPUT_RANK) and all agree on a batch of at least one row."""
    sizes = {}
    for name, value in inputs.items():
        if value is not None:
            check_rank(value, (ranks or {}).get(name, PUBLIC_INPUT_RANK), name)
            sizes[name] = int(value.shape[0])
    if not sizes:
        raise InputError("request has no inputs; send at least one of TEXT, IMAGE or VIDEO")
    if len(set(sizes.values())) != 1:
        raise InputError(f"inputs disagree on the batch size: {sizes}")
    size = next(iter(sizes.values()))
    if size < 1:
        raise InputError("request has no rows (batch size 0)")
    return size


def _row_token_ids(values: np.ndarray | None, row: int) -> tuple[int, ...]:
    if values is None:
        return ()
    return tuple(int(token) for token in np.asarray(values[row]).reshape(-1))


def parse_items(inputs: Tensors) -> list[EmbeddingItem]:
    """The embedding ensemble's public tensors as one item per batch row."""
    items = []
    for row in range(batch_size_of(inputs)):
        try:
            instruction = row_scalar(inputs.get("INSTRUCTION"), row, "INSTRUCTION")
            dimensions = row_scalar(inputs.get("DIMENSIONS"), row, "DIMENSIONS")
            raw = row_scalar(inputs.get("RAW"), row, "RAW")
            items.append(
                EmbeddingItem(
                    text=row_text(inputs, "TEXT", row),
                    images=row_blobs(inputs.get("IMAGE"), row),
                    videos=row_blobs(inputs.get("VIDEO"), row),
                    instruction=None if instruction is None else decode_text(instruction, "INSTRUCTION"),
                    dimensions=0 if dimensions is None else int(dimensions),
                    raw=bool(raw),
                    token_ids=_row_token_ids(inputs.get("TOKEN_IDS"), row),
                )
            )
        except InputError as error:
            raise error.at_row(row) from None
    return items


def _side(inputs: Tensors, prefix: str, row: int) -> PairSide:
    return PairSide(
        text=row_text(inputs, f"{prefix}_TEXT", row),
        images=row_blobs(inputs.get(f"{prefix}_IMAGE"), row),
        videos=row_blobs(inputs.get(f"{prefix}_VIDEO"), row),
    )


def parse_pairs(inputs: Tensors) -> list[RerankPair]:
    """The reranker ensemble's QUERY_*/DOCUMENT_* and INSTRUCTION tensors as one pair per batch row."""
    pairs = []
    for row in range(batch_size_of(inputs)):
        try:
            instruction = row_scalar(inputs.get("INSTRUCTION"), row, "INSTRUCTION")
            pairs.append(
                RerankPair(
                    query=_side(inputs, "QUERY", row),
                    document=_side(inputs, "DOCUMENT", row),
                    instruction=None if instruction is None else decode_text(instruction, "INSTRUCTION"),
                )
            )
        except InputError as error:
            raise error.at_row(row) from None
    return pairs


_Record = TypeVar("_Record")


def prepare_each(
    records: Sequence[_Record], prepare: Callable[[_Record], PreparedItem]
) -> list[PreparedItem]:
    """Every row of one request; the first bad row fails the request with an error naming it."""
    prepared = []
    for row, record in enumerate(records):
        try:
            prepared.append(prepare(record))
        except InputError as error:
            raise error.at_row(row) from None
    return prepared
