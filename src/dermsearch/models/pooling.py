"""Pooling a feature map over weighted cells: the field of view's pooled vector.

:func:`field_weights` turns a 0/1 field at the input's size into per-cell weights for a map of any
size; :func:`masked_mean` averages a map over them. All-ones weights give exactly the global
average pooling the backbones use when no field is given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["field_weights", "masked_mean"]


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
