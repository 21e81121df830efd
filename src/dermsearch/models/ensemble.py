"""Feature networks on top of backbones: the paper's ensemble and the single pretrained default.

Both return a :class:`FeatureNetOutput`: the feature vector and, per member, the 7 stage taps,
so that style (Gram) code downstream only deals with the tap contract.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .efficientnet import Backbone

__all__ = ["FeatureNetOutput", "PooledFeatureNet", "EnsembleFeatureNet"]


@dataclass(frozen=True)
class FeatureNetOutput:
    feature: torch.Tensor                   # [B, D]
    member_taps: list[list[torch.Tensor]]   # per member, the 7 stage outputs
    logits: torch.Tensor | None = None      # training head, when present


class PooledFeatureNet(nn.Module):
    """One backbone; the feature vector is its globally pooled vector (the untrained default)."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.members = nn.ModuleList([backbone])
        self.feature_dim = backbone.pooled_dim

    def forward(self, x: torch.Tensor) -> FeatureNetOutput:
        out = self.members[0](x)
        return FeatureNetOutput(out.pooled, [out.features])


class EnsembleFeatureNet(nn.Module):
    """N backbones -> (GAP, BatchNorm) each -> concatenation -> Dense(feature_dim, SELU) [-> head].

    The head (``head_outputs`` > 0) exists for training only; search uses ``feature``.
    """

    def __init__(self, members: list[Backbone], feature_dim: int = 1024, head_outputs: int = 0):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.norms = nn.ModuleList(nn.BatchNorm1d(m.pooled_dim) for m in members)
        self.dense = nn.Linear(sum(m.pooled_dim for m in members), feature_dim)
        self.act = nn.SELU()
        self.head = nn.Linear(feature_dim, head_outputs) if head_outputs else None
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> FeatureNetOutput:
        pooled, taps = [], []
        for member, norm in zip(self.members, self.norms):
            out = member(x)
            pooled.append(norm(out.pooled))
            taps.append(out.features)
        feature = self.act(self.dense(torch.cat(pooled, dim=1)))
        logits = self.head(feature) if self.head is not None else None
        return FeatureNetOutput(feature, taps, logits)
