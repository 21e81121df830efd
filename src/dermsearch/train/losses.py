"""Losses as functions over tensors, with thin module wrappers.

Focal Tversky loss (Abraham & Khan 2018), in their convention:
    TI = TP / (TP + α·FN + β·FP),   FTL = (1 − TI)^(1/γ)
with soft TP/FN/FP from sigmoid probabilities, per image, averaged over the batch.
Defaults α = 0.7, β = 0.3, γ = 4/3 (their choice). The Tversky index comes from MONAI's
``TverskyLoss`` (whose own ``alpha`` weighs false positives and ``beta`` false negatives, so the
two are swapped when handed over).

Focal loss (Lin et al. 2017), from MONAI's ``FocalLoss``:
    binary:      FL = −α_t (1 − p_t)^γ log p_t,  α_t = α for positives, 1 − α for negatives
    multi-class: FL = −w_y (1 − p_y)^γ log p_y   (softmax p; optional class weights w)
averaged over the batch.
"""

from __future__ import annotations

import torch
from monai.losses import FocalLoss, TverskyLoss
from torch import nn

from ..errors import ConfigError
from ..names import METRIC_LOSSES

__all__ = ["focal_tversky_loss", "FocalTverskyLoss", "binary_focal_loss", "multiclass_focal_loss", "METRIC_LOSSES",
           "metric_loss_module"]


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


def binary_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float | None = 0.25,
                      gamma: float = 2.0) -> torch.Tensor:
    """``logits``, ``target``: [B] or [B, 1]; target 0/1. ``alpha=None``: no class balancing."""
    logits = logits.reshape(-1, 1)
    target = target.reshape(-1, 1).to(logits.dtype)
    loss = FocalLoss(gamma=gamma, alpha=alpha, reduction="none")(logits, target)
    return loss.mean()


def multiclass_focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
                          class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """``logits`` [B, C]; ``target`` [B] class indices; ``class_weights`` [C] or None."""
    onehot = torch.nn.functional.one_hot(target.long(), logits.shape[1]).to(logits.dtype)
    alpha = None if class_weights is None else class_weights.to(logits)
    loss = FocalLoss(gamma=gamma, alpha=alpha, use_softmax=True, reduction="none")(logits, onehot)
    return loss.sum(dim=1).mean()


# ------------------------------------------------------------------ metric learning on the search feature



def metric_loss_module(name: str, classes: int, dim: int, temperature: float = 0.1) -> nn.Module | None:
    """A metric-learning loss on the search feature, from pytorch-metric-learning, or None for "none".

    ``supcon``: supervised contrastive loss (Khosla et al. 2020) over cosine similarity at
    ``temperature``; ``proxy-anchor`` (Kim et al. 2020; margin 0.1, α 32): one learned proxy per
    class (its parameters must be optimised with the rest). Both take (embeddings [B, D], labels [B])."""
    if name == "none":
        return None
    from pytorch_metric_learning import losses as pml

    if name == "supcon":
        return pml.SupConLoss(temperature=temperature)
    if name == "proxy-anchor":
        return pml.ProxyAnchorLoss(num_classes=classes, embedding_size=dim, margin=0.1, alpha=32)
    raise ConfigError(f"unknown metric loss {name!r}; valid: {', '.join(METRIC_LOSSES)}")
