"""The tensors between the preprocess step and the model step, for one request of B rows.

Padding happens only inside one request (Triton's ragged batching keeps requests apart), so a request's
rows share one rectangular tensor per input:

    INPUT_IDS       INT64 [B, L]        right-padded token ids
    SEQ_LEN         INT64 [B, 1]        real length of each row
    EMBED_DIM       INT32 [B, 1]        Matryoshka size per row (0 = full)
    IMAGE_PATCHES   UINT8 [B, P, 1536]  every image patch of a row, concatenated, zero-padded to P
    IMAGE_GRID_THW  INT64 [B, K, 3]     one (t, h, w) per image, zero rows pad to K
    VIDEO_PATCHES / VIDEO_GRID_THW      the same for videos
    QUEUED_AT       INT64 [B, 1]        time.monotonic_ns() when the preprocess step answered (optional;
                                        set by backend.steps, read by the model step's queue timeout)

The vision tensors are left out of a request that has no image (no video). Pixels travel as uint8 and are
normalised on the model's device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from backend.errors import InputError
from backend.protocol import (
    EMBEDDING_RANGE_INPUT,
    EMBEDDING_TYPES_INPUT,
    QUEUED_AT,
    PreparedItem,
    VisionPatches,
    batch_size_of,
)

MODALITIES = (("IMAGE", "images"), ("VIDEO", "videos"))
# Dimensions of each wire tensor, batch first (the table above).
RANKS = {
    "INPUT_IDS": 2,
    "SEQ_LEN": 2,
    "EMBED_DIM": 2,
    "IMAGE_PATCHES": 3,
    "IMAGE_GRID_THW": 3,
    "VIDEO_PATCHES": 3,
    "VIDEO_GRID_THW": 3,
    QUEUED_AT: 2,
    EMBEDDING_TYPES_INPUT: 2,  # the compact types a row asks for (backend.vectors)
    EMBEDDING_RANGE_INPUT: 2,
}


def _pack_vision(rows: Sequence[PreparedItem], attribute: str) -> tuple[np.ndarray, np.ndarray] | None:
    per_row: list[tuple[VisionPatches, ...]] = [getattr(row, attribute) for row in rows]
    if not any(per_row):
        return None
    width = next(v.patches.shape[1] for visuals in per_row for v in visuals)
    max_patches = max(sum(v.patches.shape[0] for v in visuals) for visuals in per_row)
    max_items = max(len(visuals) for visuals in per_row)
    patches = np.zeros((len(rows), max_patches, width), dtype=np.uint8)
    grids = np.zeros((len(rows), max_items, 3), dtype=np.int64)
    for index, visuals in enumerate(per_row):
        offset = 0
        for slot, visual in enumerate(visuals):
            count = visual.patches.shape[0]
            patches[index, offset : offset + count] = visual.patches
            grids[index, slot] = visual.grid_thw
            offset += count
    return patches, grids


def pack_rows(
    rows: Sequence[PreparedItem], pad_token_id: int, with_dimensions: bool = True
) -> dict[str, np.ndarray]:
    """`with_dimensions=False` leaves EMBED_DIM out (the reranker has no Matryoshka size)."""
    lengths = np.array([[row.length] for row in rows], dtype=np.int64)
    input_ids = np.full((len(rows), int(lengths.max())), pad_token_id, dtype=np.int64)
    for index, row in enumerate(rows):
        input_ids[index, : row.length] = row.input_ids
    tensors = {"INPUT_IDS": input_ids, "SEQ_LEN": lengths}
    if with_dimensions:
        tensors["EMBED_DIM"] = np.array([[row.dimensions] for row in rows], dtype=np.int32)
    for prefix, attribute in MODALITIES:
        packed = _pack_vision(rows, attribute)
        if packed is not None:
            tensors[f"{prefix}_PATCHES"], tensors[f"{prefix}_GRID_THW"] = packed
    return tensors


def _unpack_vision(
    patches: np.ndarray | None, grids: np.ndarray | None, row: int, prefix: str
) -> tuple[VisionPatches, ...]:
    if patches is None and grids is None:
        return ()
    if patches is None or grids is None:
        raise InputError("vision patches and their grid must come together", input=f"{prefix}_GRID_THW")
    visuals = []
    offset = 0
    for t, h, w in grids[row].tolist():  # Python ints: a hostile grid must not overflow int64
        if t == 0:
            continue
        count = t * h * w
        if min(t, h, w) <= 0 or offset + count > patches.shape[1]:
            raise InputError(
                f"grid ({t}, {h}, {w}) asks for patches that were not sent", input=f"{prefix}_GRID_THW"
            )
        visuals.append(
            VisionPatches(patches=patches[row, offset : offset + count], grid_thw=(int(t), int(h), int(w)))
        )
        offset += count
    return tuple(visuals)


def unpack_rows(tensors: Mapping[str, np.ndarray | None]) -> list[PreparedItem]:
    input_ids, lengths = tensors.get("INPUT_IDS"), tensors.get("SEQ_LEN")
    if input_ids is None or lengths is None:
        raise InputError("INPUT_IDS and SEQ_LEN are required")
    # Ranks and one batch size over all tensors first: a tensor without its batch dimension or with fewer
    # rows would otherwise fail below as an IndexError, an INTERNAL.
    batch = batch_size_of(tensors, RANKS)
    dims = tensors.get("EMBED_DIM")
    rows = []
    for index in range(batch):
        try:
            length = int(lengths[index].reshape(-1)[0])
            if not 0 < length <= input_ids.shape[1]:
                raise InputError(f"{length} is outside 1..{input_ids.shape[1]}", input="SEQ_LEN")
            rows.append(
                PreparedItem(
                    input_ids=input_ids[index, :length],
                    images=_unpack_vision(
                        tensors.get("IMAGE_PATCHES"), tensors.get("IMAGE_GRID_THW"), index, "IMAGE"
                    ),
                    videos=_unpack_vision(
                        tensors.get("VIDEO_PATCHES"), tensors.get("VIDEO_GRID_THW"), index, "VIDEO"
                    ),
                    dimensions=0 if dims is None else int(dims[index].reshape(-1)[0]),
                )
            )
        except InputError as error:
            raise error.at_row(index) from None
    return rows
