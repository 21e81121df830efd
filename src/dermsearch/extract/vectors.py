"""What extraction produces for a batch of images: plain numpy arrays (no network library)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Extracted"]


@dataclass(frozen=True)
class Extracted:
    features: np.ndarray          # [B, D] float32
    styles: np.ndarray | None     # [B, S] float32
    masks: np.ndarray | None      # [B, mask_size²/8] uint8 (bit-packed)
    mask_areas: np.ndarray | None  # [B] int32, pixels set

    @staticmethod
    def concat(parts: list[Extracted]) -> Extracted:
        def cat(name: str) -> np.ndarray | None:
            arrays = [getattr(p, name) for p in parts]
            return None if arrays[0] is None else np.concatenate(arrays)
        return Extracted(cat("features"), cat("styles"), cat("masks"), cat("mask_areas"))
