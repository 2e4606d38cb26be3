"""Typed records every layer passes on: what a client asked for, and what the model step consumes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backend.vision import VisionPatches


@dataclass(frozen=True)
class EmbeddingItem:
    """One batch row of the public contract: any mix of text, images and videos, plus options."""

    text: str | None = None
    images: tuple[bytes, ...] = ()
    videos: tuple[bytes, ...] = ()
    instruction: str | None = None
    dimensions: int = 0  # 0 = the model's full hidden size

    @property
    def has_content(self) -> bool:
        return bool(self.text) or bool(self.images) or bool(self.videos)


@dataclass(frozen=True)
class PreparedItem:
    """One row ready for the model: token ids and the vision patches its placeholder tokens stand for."""

    input_ids: np.ndarray  # int64 [L]
    images: tuple[VisionPatches, ...] = ()
    videos: tuple[VisionPatches, ...] = ()
    dimensions: int = 0

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def vision_patch_count(self) -> int:
        return sum(int(v.patches.shape[0]) for v in self.images) + sum(
            int(v.patches.shape[0]) for v in self.videos
        )
