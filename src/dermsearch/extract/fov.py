"""The dermatoscope's field of view: the frame without the dark vignette around it.

Contact dermatoscopes image a round field; the camera's rectangular frame holds it with black
corners (often a black ring). Averaging a network's map over the whole frame mixes those corners into
the image's vector, by an amount that depends on the device, not on the lesion. :func:`field_of_view`
finds the vignette without knowing the device: the dark pixels (every channel below ``dark`` after a
median filter) in a connected region that holds a corner of the frame. A dark lesion inside the
field is never cut out (it does not reach a corner), and a frame whose "vignette" is tiny, or which
is mostly dark, counts as having none (the whole frame is the field), so that an image without a
vignette is pooled exactly as before.

:func:`field_weights` turns a field into per-cell weights for a map of any size, and
:func:`masked_mean` averages a map over them (the pooled vector of the field).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = ["field_of_view", "field_weights", "masked_mean", "DARK", "MIN_VIGNETTE", "MIN_FIELD"]

DARK = 32             # a vignette pixel: every channel below this (0..255), after the median filter
MEDIAN = 5            # median filter size (px): JPEG noise and single bright pixels in the black ring
MIN_VIGNETTE = 0.01   # a dark corner region under this share of the frame is no vignette
MIN_FIELD = 0.30      # a field under this share of the frame is implausible: use the whole frame


def field_of_view(rgb: np.ndarray, dark: int = DARK, min_vignette: float = MIN_VIGNETTE,
                  min_field: float = MIN_FIELD) -> np.ndarray:
    """[H, W, 3] uint8 RGB -> [H, W] bool, True inside the field of view (see the module doc)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"field_of_view needs an [H, W, 3] RGB array, not shape {rgb.shape}")
    h, w = rgb.shape[:2]
    whole = np.ones((h, w), dtype=bool)
    level = ndimage.median_filter(rgb.max(axis=2), size=MEDIAN, mode="nearest")
    labels, n = ndimage.label(level < dark)
    if n == 0:
        return whole
    corner_labels = np.unique(labels[[0, 0, h - 1, h - 1], [0, w - 1, 0, w - 1]])
    corner_labels = corner_labels[corner_labels > 0]
    if corner_labels.size == 0:
        return whole
    outside = np.isin(labels, corner_labels)
    share = float(outside.mean())
    if share < min_vignette or 1.0 - share < min_field:
        return whole
    return ~outside


def field_weights(fields: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Fields [B, 1, S, S] (0/1 float) -> per-cell weights [B, 1, h, w] for a map of ``size``: the
    share of each cell's pixels inside the field."""
    h, w = size
    s_h, s_w = fields.shape[-2:]
    if s_h % h == 0 and s_w % w == 0 and s_h // h == s_w // w:
        return F.avg_pool2d(fields, s_h // h)
    return F.adaptive_avg_pool2d(fields, (h, w))


def masked_mean(fmap: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """[B, C, h, w] averaged over the cells with weights [B, 1, h, w] -> [B, C]:
    Σ_p w_p f_p / Σ_p w_p; all-ones weights (or None) give the plain global average, and a row
    whose weights sum to 0 uses the plain average too."""
    if weights is None:
        return fmap.mean(dim=(2, 3))
    wt = weights.to(fmap.dtype)
    total = wt.sum(dim=(2, 3))                                   # [B, 1]
    empty = total <= 0
    wt = torch.where(empty[:, :, None, None], torch.ones_like(wt), wt)
    total = torch.where(empty, torch.full_like(total, float(wt.shape[-2] * wt.shape[-1])), total)
    return (fmap * wt).sum(dim=(2, 3)) / total
