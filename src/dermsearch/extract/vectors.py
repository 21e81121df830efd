"""The vectors of a set of images: plain numpy arrays (no network library).

One type carries the four arrays everywhere: what extraction returns, a batch of queries, the
rows of an index, one shard of them. ``take`` and ``concat`` handle the optional arrays (an index
built without style vectors or masks) in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Vectors"]

FIELDS = ("features", "styles", "masks", "mask_areas")

@dataclass(frozen=True)
class Vectors:
    features: np.ndarray                  # [B, D] float32
    styles: np.ndarray | None = None      # [B, S] float32
    masks: np.ndarray | None = None       # [B, mask_size²/8] uint8 (bit-packed)
    mask_areas: np.ndarray | None = None  # [B] int, pixels set

    def __len__(self) -> int:
        return self.features.shape[0]

    def arrays(self) -> tuple[np.ndarray | None, ...]:
        return self.features, self.styles, self.masks, self.mask_areas

    def take(self, rows) -> Vectors:
        """These rows (an index array, a boolean mask or a slice), as a new set (copies for
        index arrays; views for slices, so a memory map stays unread)."""
        return Vectors(*(None if a is None else a[rows] for a in self.arrays()))

    def loaded(self) -> Vectors:
        """Every array in RAM (memory-mapped rows read)."""
        return Vectors(*(None if a is None else np.array(a) for a in self.arrays()))

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays() if a is not None))

    @staticmethod
    def concat(parts: Sequence[Vectors]) -> Vectors:
        """The rows of ``parts``, in order. An optional array is kept only when every part has it."""
        if not parts:
            raise ValueError("no vectors to concatenate")

        def cat(name: str) -> np.ndarray | None:
            arrays = [getattr(p, name) for p in parts]
            return None if any(a is None for a in arrays) else np.concatenate(arrays)
        return Vectors(*(cat(f) for f in FIELDS))

