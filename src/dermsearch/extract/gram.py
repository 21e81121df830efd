"""Gram matrices and the exact style vector (SPEC section 2).

Normalisation: G = F Fᵀ / (H·W) for the C x (H·W) map F of one image. Per layer, the
members' Grams are averaged. The style loss of eq. 6,
    LS(q, y) = Σ_l Σ_ij (β_l G^q_l,ij − β_l G^y_l,ij)²,
equals the squared L2 distance between the vectors built here: for each layer, the diagonal
of β_l·G_l followed by √2 times its strict upper triangle (G is symmetric, so every
off-diagonal pair counts twice in eq. 6).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["gram_matrix", "average_grams", "style_vector", "style_dim", "layer_weights"]


def gram_matrix(fmap: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, C], normalised by H·W."""
    b, c, h, w = fmap.shape
    f = fmap.reshape(b, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (h * w)


def average_grams(member_taps: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
    """Per layer, the mean over members of the members' Gram matrices."""
    n_layers = {len(t) for t in member_taps}
    if len(n_layers) != 1:
        raise ValueError(f"members disagree on the number of taps: {sorted(n_layers)}")
    layers = []
    for taps in zip(*member_taps):
        grams: dict[int, torch.Tensor] = {}   # a tap shared by members (frozen shared stages) is computed once
        for t in taps:
            if id(t) not in grams:
                grams[id(t)] = gram_matrix(t)
        layers.append(torch.stack([grams[id(t)] for t in taps]).mean(0))
    return layers


def layer_weights(channels: Sequence[int], scheme: str) -> list[float]:
    """β_l per layer. ``inverse-channels``: β_l = 1/C_l, so that each layer's term is the mean
    squared Gram difference over its C_l² entries (layers weigh alike). ``ones``: β_l = 1."""
    if scheme == "inverse-channels":
        return [1.0 / c for c in channels]
    if scheme == "ones":
        return [1.0] * len(channels)
    raise KeyError(f"unknown gram weighting {scheme!r}; valid: inverse-channels, ones")


def style_dim(channels: Sequence[int]) -> int:
    return sum(c * (c + 1) // 2 for c in channels)


def style_vector(grams: Sequence[torch.Tensor], betas: Sequence[float]) -> np.ndarray:
    """Pack the per-layer Grams [B, C, C] into [B, Σ C(C+1)/2] float32 (see module doc)."""
    parts = []
    root2 = float(np.sqrt(2.0))
    for g, beta in zip(grams, betas):
        c = g.shape[-1]
        g = g.double() * beta
        iu = torch.triu_indices(c, c, offset=1)
        parts.append(torch.diagonal(g, dim1=-2, dim2=-1))
        parts.append(g[:, iu[0], iu[1]] * root2)
    return torch.cat(parts, dim=1).float().numpy()
