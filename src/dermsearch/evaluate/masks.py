"""Mask figures: per-image Dice and Jaccard of binary masks, and a segmenter's summary on a data set."""

from __future__ import annotations

import numpy as np
import torch

from ..search.measures import dice

__all__ = ["dice_scores", "jaccard_scores", "evaluate_masks"]


def dice_scores(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image Dice of binary masks [B, 1, H, W]; both empty -> 1."""
    p, t = pred.bool().flatten(1), target.bool().flatten(1)
    return dice((p & t).sum(1).double(), (p.sum(1) + t.sum(1)).double())


def jaccard_scores(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image Jaccard (intersection over union) of binary masks; both empty -> 1."""
    p, t = pred.bool().flatten(1), target.bool().flatten(1)
    inter = (p & t).sum(1).double()
    union = (p | t).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def evaluate_masks(pred: torch.Tensor, target: torch.Tensor) -> tuple[dict, np.ndarray]:
    """Summary (mean and median Dice, mean Jaccard) and the per-image Dice values."""
    d, j = dice_scores(pred, target).numpy(), jaccard_scores(pred, target).numpy()
    summary = {"images": len(d), "dice": float(np.mean(d)), "dice_median": float(np.median(d)),
               "jaccard": float(np.mean(j))}
    return summary, d
