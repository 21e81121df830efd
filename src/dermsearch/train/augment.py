"""Augmentation (paper section 3.2): GridMask, left-right and up-down flips, brightness,
contrast, hue and saturation.

Online: :class:`Augmenter` draws a random combination per batch element (kornia for the flips
and colour operations; geometric operations move image and mask together). Offline:
:func:`expand_x7` gives the paper's expansion, each image plus 7 variants, one per operation.
GridMask (Chen et al. 2020) is not in kornia and is written here.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch

from .config import AugmentConfig

__all__ = ["AugmentConfig", "Augmenter", "grid_mask", "random_zoom", "expand_x7", "x7_variant"]


def zoom_factors(n: int, jitter: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` zoom factors, log-uniform in [1/(1+jitter), 1+jitter] (so zooming in and out are alike)."""
    r = torch.log1p(torch.tensor(float(jitter)))
    return torch.exp((2 * torch.rand(n, generator=generator) - 1) * r)


def random_zoom(images: torch.Tensor, jitter: float, generator: torch.Generator | None = None,
                masks: torch.Tensor | None = None, factors: torch.Tensor | None = None):
    """Scale augmentation: each image zoomed about its centre by its own factor (> 1 magnifies, < 1
    shrinks, the border filled by reflection), as a lesion looks under another dermatoscope or
    distance. Masks (optional) follow, nearest-neighbour. ``factors`` fixes them (else drawn with
    :func:`zoom_factors`)."""
    from kornia.geometry.transform import scale

    if jitter <= 0 and factors is None:
        return images if masks is None else (images, masks)
    f = (zoom_factors(images.shape[0], jitter, generator) if factors is None else factors).to(images)
    zoomed = scale(images, f, padding_mode="reflection", align_corners=True)
    if masks is None:
        return zoomed
    m = scale(masks.to(images.dtype), f.to(masks.device), mode="nearest", padding_mode="reflection",
              align_corners=True)   # the same fill as the image, so a lesion at the edge is mirrored in both
    return zoomed, m


def grid_mask(images: torch.Tensor, d_min: int, d_max: int, ratio: float, generator: torch.Generator | None = None,
              fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """GridMask: per image, a grid of period d ~ U[d_min, d_max] with a random offset; in each
    d x d unit a square of side round(ratio·d) is filled. Expected masked fraction ≈ ratio².

    Returns the masked images and the keep mask [B, 1, H, W] (1 = kept)."""
    b, _, h, w = images.shape
    keep = torch.ones(b, 1, h, w, dtype=images.dtype, device=images.device)
    for i in range(b):
        d = int(torch.randint(d_min, d_max + 1, (1,), generator=generator))
        side = max(1, round(ratio * d))
        oy, ox = (int(v) for v in torch.randint(0, d, (2,), generator=generator))
        ys = ((torch.arange(h) - oy) % d) < side
        xs = ((torch.arange(w) - ox) % d) < side
        keep[i, 0] = (~(ys[:, None] & xs[None, :])).to(device=images.device, dtype=images.dtype)
    return images * keep + fill * (1 - keep), keep


class Augmenter:
    """Online random augmentation of a batch in [0, 1]; masks (optional) follow the geometry."""

    def __init__(self, config: AugmentConfig = AugmentConfig(), scale_jitter: float = 0.0):
        self.config = c = config
        self.scale_jitter = scale_jitter
        self.geometric = K.AugmentationSequential(
            K.RandomHorizontalFlip(p=c.p_flip), K.RandomVerticalFlip(p=c.p_flip), data_keys=["input", "mask"])
        self.color = K.ColorJiggle(c.brightness, c.contrast, c.saturation, c.hue, p=c.p_color)

    def __call__(self, images: torch.Tensor, masks: torch.Tensor | None = None,
                 generator: torch.Generator | None = None):
        c = self.config
        if masks is None:
            images = self.geometric(images, torch.zeros_like(images[:, :1]))[0]
        else:
            images, masks = self.geometric(images, masks.float())
        if masks is None:
            images = random_zoom(images, self.scale_jitter, generator)
        else:
            images, masks = random_zoom(images, self.scale_jitter, generator, masks)
        images = self.color(images).clamp(0, 1)
        if c.p_gridmask > 0:
            pick = (torch.rand(images.shape[0], generator=generator) < c.p_gridmask).to(images.device)
            if pick.any():
                images = images.clone()
                images[pick] = grid_mask(images[pick], *c.grid_d, c.grid_ratio, generator)[0]
        return images if masks is None else (images, masks)




def x7_variant(images: torch.Tensor, variant: int, config: AugmentConfig = AugmentConfig(),
               generator: torch.Generator | None = None, scale_jitter: float = 0.0) -> torch.Tensor:
    """Variant ``variant`` of a batch in [0, 1]: 0 the original, then GridMask, flip left-right, flip
    up-down, brightness, contrast, hue, saturation (1..7); with ``scale_jitter``, variants 1..7 are
    also zoomed (:func:`random_zoom`)."""
    if variant == 0:
        return images
    return random_zoom(_x7_operation(images, variant, config, generator), scale_jitter, generator)


def _x7_operation(images: torch.Tensor, variant: int, config: AugmentConfig, generator) -> torch.Tensor:
    c = config
    if variant == 1:
        return grid_mask(images, *c.grid_d, c.grid_ratio, generator)[0]
    if variant == 2:
        return images.flip(-1)
    if variant == 3:
        return images.flip(-2)
    jiggle = {4: {"brightness": c.brightness}, 5: {"contrast": c.contrast}, 6: {"hue": c.hue},
              7: {"saturation": c.saturation}}
    if variant not in jiggle:
        raise ValueError(f"x7 variants are 0..7, not {variant}")
    return K.ColorJiggle(**jiggle[variant], p=1.0)(images).clamp(0, 1)


def expand_x7(images: torch.Tensor, masks: torch.Tensor | None = None, config: AugmentConfig = AugmentConfig(),
              generator: torch.Generator | None = None):
    """The paper's offline expansion: each image, then 7 variants (GridMask, LR flip, UD flip,
    brightness, contrast, hue, saturation), each one operation alone. [B,...] -> [8B,...]."""
    out = torch.cat([x7_variant(images, v, config, generator) for v in range(8)])
    if masks is None:
        return out
    mask_variants = [masks, masks, masks.flip(-1), masks.flip(-2), masks, masks, masks, masks]
    return out, torch.cat(mask_variants)
