"""Binary lesion masks at one fixed size, bit-packed (8 pixels per byte)."""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["pack_masks", "unpack_mask", "resize_mask"]


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D mask to ``size`` x ``size`` (bool)."""
    img = Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255)
    return np.asarray(img.resize((size, size), Image.Resampling.NEAREST)) > 127


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """[B, S, S] bool -> [B, S*S/8] uint8."""
    masks = np.asarray(masks, dtype=bool)
    b = masks.shape[0]
    return np.packbits(masks.reshape(b, -1), axis=1)


def unpack_mask(packed: np.ndarray, size: int) -> np.ndarray:
    return np.unpackbits(np.asarray(packed, dtype=np.uint8))[: size * size].reshape(size, size).astype(bool)
