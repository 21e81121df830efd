"""Losses as functions over tensors, with thin module wrappers.

Focal Tversky loss (Abraham & Khan 2018), in their convention:
    TI = TP / (TP + α·FN + β·FP),   FTL = (1 − TI)^(1/γ)
with soft TP/FN/FP from sigmoid probabilities, per image, averaged over the batch.
Defaults α = 0.7, β = 0.3, γ = 4/3 (their choice). The Tversky index comes from MONAI's
``TverskyLoss`` (whose own ``alpha`` weighs false positives and ``beta`` false negatives, so the
two are swapped when handed over).
"""

from __future__ import annotations

import torch
from monai.losses import TverskyLoss
from torch import nn

__all__ = ["focal_tversky_loss", "FocalTverskyLoss"]


def focal_tversky_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.7, beta: float = 0.3,
                       gamma: float = 4 / 3, smooth: float = 1e-5) -> torch.Tensor:
    """``logits``, ``target``: [B, 1, H, W]; ``alpha`` weighs false negatives, ``beta`` false positives."""
    tversky = TverskyLoss(sigmoid=True, alpha=beta, beta=alpha, reduction="none",
                          smooth_nr=smooth, smooth_dr=smooth)
    per_image = tversky(logits, target.float()).reshape(logits.shape[0], -1).mean(dim=1)  # 1 − TI
    return per_image.clamp_min(0).pow(1.0 / gamma).mean()


class FocalTverskyLoss(nn.Module):
    def __init__(self, alpha: float = 0.7, beta: float = 0.3, gamma: float = 4 / 3):
        super().__init__()
        self.alpha, self.beta, self.gamma = alpha, beta, gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal_tversky_loss(logits, target, self.alpha, self.beta, self.gamma)
