"""Gram matrices and the exact style vector (SPEC section 2).

Normalisation: G = F Fᵀ / (H·W) for the C x (H·W) map F of one image. Per layer, the
members' Grams are averaged. The style loss of eq. 6,
    LS(q, y) = Σ_l Σ_ij (β_l G^q_l,ij − β_l G^y_l,ij)²,
equals the squared L2 distance between the vectors built here: for each layer, the diagonal
of β_l·G_l followed by √2 times its strict upper triangle (G is symmetric, so every
off-diagonal pair counts twice in eq. 6).

Lesion-aware pooling (an extension beyond the paper, ``ExtractorConfig.gram_pool``): instead of
averaging f fᵀ over all H·W positions, average it with weights w_p in [0, 1] that say how much of
tap cell p lies inside the lesion mask (dilated by a margin):
    G = Σ_p w_p f_p f_pᵀ / Σ_p w_p.
With a 0/1 mask aligned to the tap grid this is exactly the plain Gram of the lesion cells alone.
An empty weight map (no lesion found, or a lesion that fills the image for ``skin``) falls back
to the whole image. The packing, and so the exactness of LS as a squared distance, is unchanged.

Field of view (``ExtractorConfig.fov``, ``extract/fov.py``): with a field given, the pixel weights
above are multiplied by it before they are pooled to the tap grid (for "image": the weights are the
field), so the dark vignette of a contact dermatoscope never enters a Gram.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, NotFoundError
from ..models.pooling import field_weights
from ..names import GRAM_NORMS, GRAM_POOLS

__all__ = ["gram_matrix", "masked_gram_matrix", "gram_pool_weights", "dilate_masks", "average_grams",
           "style_vector", "style_dim", "layer_weights", "gram_channels", "style_layout",
           "normalise_grams", "GRAM_POOLS", "GRAM_NORMS"]

# "image": the paper's Gram over the whole map; "lesion": over the (dilated) lesion mask;
# "lesion+skin": the lesion Gram followed by the Gram of the skin outside the (undilated) mask.


def gram_matrix(fmap: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, C], normalised by H·W."""
    b, c, h, w = fmap.shape
    f = fmap.reshape(b, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (h * w)


def masked_gram_matrix(fmap: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """[B, C, H, W] and weights [B, 1, H, W] (or None: all ones) -> [B, C, C],
    Σ_p w_p f_p f_pᵀ / Σ_p w_p; a row whose weights sum to 0 uses the whole map."""
    if weights is None:
        return gram_matrix(fmap)
    b, c, h, w = fmap.shape
    f = fmap.reshape(b, c, h * w)
    wt = weights.reshape(b, 1, h * w).to(f.dtype)
    total = wt.sum(dim=2, keepdim=True)                      # [B, 1, 1]
    empty = total <= 0
    wt = torch.where(empty, torch.ones_like(wt), wt)
    total = torch.where(empty, torch.full_like(total, float(h * w)), total)
    return torch.bmm(f * wt, f.transpose(1, 2)) / total


def dilate_masks(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Square (Chebyshev) dilation of [B, 1, S, S] 0/1 masks by ``radius`` pixels, separable."""
    if radius <= 0:
        return masks
    k = 2 * radius + 1
    m = F.max_pool2d(masks, (1, k), stride=1, padding=(0, radius))
    return F.max_pool2d(m, (k, 1), stride=1, padding=(radius, 0))


def gram_pool_weights(masks: torch.Tensor, size: tuple[int, int], margin: float = 0.0,
                      outside: bool = False, field: torch.Tensor | None = None) -> torch.Tensor:
    """Per-cell pooling weights [B, 1, h, w] for a tap of spatial ``size`` from lesion masks
    [B, 1, S, S] (0/1 float, at the model's input size): the mask is dilated by ``margin`` x S
    pixels, complemented when ``outside`` (the skin), multiplied by the field of view [B, 1, S, S]
    when one is given, and each tap cell gets the fraction of its pixels that are set."""
    s = masks.shape[-1]
    m = dilate_masks(masks, int(round(margin * s)))
    if outside:
        m = 1.0 - m
    if field is not None:
        m = m * field.to(m.dtype)
    return field_weights(m, size)


def average_grams(member_taps: Sequence[Sequence[torch.Tensor]], masks: torch.Tensor | None = None,
                  pool: str = "image", margin: float = 0.0, field: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Per layer, the mean over members of the members' Gram matrices. With ``pool`` "lesion"
    the Grams are pooled over ``masks`` (see :func:`gram_pool_weights`); with "lesion+skin"
    each layer yields two Grams, the lesion's then the skin's (2 x the layers). ``field``: the
    field of view [B, 1, S, S]; every weight map is restricted to it (module doc)."""
    if pool not in GRAM_POOLS:
        raise NotFoundError(f"unknown gram pooling {pool!r}; valid: {', '.join(GRAM_POOLS)}")
    if pool == "image":
        return _average_grams(member_taps, None, False, 0.0, field)
    if masks is None:
        raise ConfigError(f"gram pooling {pool!r} needs lesion masks")
    lesion = _average_grams(member_taps, masks, False, margin, field)
    if pool == "lesion":
        return lesion
    skin = _average_grams(member_taps, masks, True, 0.0, field)   # everything outside the lesion mask itself
    return [g for pair in zip(lesion, skin) for g in pair]


def _average_grams(member_taps, masks, outside: bool, margin: float, field=None) -> list[torch.Tensor]:
    n_layers = {len(t) for t in member_taps}
    if len(n_layers) != 1:
        raise ValueError(f"members disagree on the number of taps: {sorted(n_layers)}")
    layers = []
    for taps in zip(*member_taps):
        grams: dict[int, torch.Tensor] = {}   # a tap shared by members (frozen shared stages) is computed once
        size = tuple(taps[0].shape[-2:])
        if masks is not None:
            weights = gram_pool_weights(masks.to(taps[0].dtype), size, margin, outside, field)
        elif field is not None:
            weights = field_weights(field.to(taps[0].dtype), size)
        else:
            weights = None
        for t in taps:
            if id(t) not in grams:
                grams[id(t)] = masked_gram_matrix(t, weights)
        layers.append(torch.stack([grams[id(t)] for t in taps]).mean(0))
    return layers




def normalise_grams(grams: Sequence[torch.Tensor], norm: str) -> list[torch.Tensor]:
    """Entry-wise normalisation of each (member-averaged) Gram before β and packing:
    ``none``; ``sqrt``: sign(G)·|G|^½ (signed square root); ``l2``: G/‖G‖_F; ``sqrt+l2``: both,
    in that order. LS stays the exact squared distance of the stored (packed) vectors."""
    if norm not in GRAM_NORMS:
        raise NotFoundError(f"unknown gram normalisation {norm!r}; valid: {', '.join(GRAM_NORMS)}")
    out = []
    for g in grams:
        if "sqrt" in norm:
            g = torch.sign(g) * torch.sqrt(torch.abs(g))
        if "l2" in norm:
            g = g / torch.sqrt((g * g).sum(dim=(-2, -1), keepdim=True)).clamp_min(1e-12)
        out.append(g)
    return out


def layer_weights(channels: Sequence[int], scheme: str) -> list[float]:
    """β_l per layer. ``inverse-channels``: β_l = 1/C_l, so that each layer's term is the mean
    squared Gram difference over its C_l² entries (layers weigh alike). ``ones``: β_l = 1."""
    if scheme == "inverse-channels":
        return [1.0 / c for c in channels]
    if scheme == "ones":
        return [1.0] * len(channels)
    raise NotFoundError(f"unknown gram weighting {scheme!r}; valid: inverse-channels, ones")


def style_dim(channels: Sequence[int]) -> int:
    return sum(c * (c + 1) // 2 for c in channels)


def gram_channels(tap_channels: Sequence[int], pool: str) -> list[int]:
    """The channels of each stored Gram, in storage order (two per tap for "lesion+skin")."""
    if pool not in GRAM_POOLS:
        raise NotFoundError(f"unknown gram pooling {pool!r}; valid: {', '.join(GRAM_POOLS)}")
    return [c for c in tap_channels for _ in range(2 if pool == "lesion+skin" else 1)]


def style_layout(tap_channels: Sequence[int], pool: str, betas: Sequence[float]) -> list[dict]:
    """Where each Gram sits in the packed style vector: one entry per stored Gram with its
    stage (1-based), region ("image", "lesion" or "skin"), channels, β, offset and size."""
    regions = {"image": ("image",), "lesion": ("lesion",), "lesion+skin": ("lesion", "skin")}[pool]
    chans = gram_channels(tap_channels, pool)
    if len(betas) != len(chans):
        raise ConfigError(f"{len(betas)} layer weights for {len(chans)} Gram matrices (Gram weights fitted "
                          f"for another backbone or pool?)")
    out, offset = [], 0
    for i, (c, beta) in enumerate(zip(chans, betas)):
        size = c * (c + 1) // 2
        out.append({"stage": i // len(regions) + 1, "region": regions[i % len(regions)], "channels": c,
                    "beta": float(beta), "offset": offset, "size": size})
        offset += size
    return out


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
