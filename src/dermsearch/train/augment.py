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

__all__ = ["AugmentConfig", "Augmenter", "grid_mask", "random_zoom", "expand_x7", "x7_variant", "synthetic_vignette",
           "synthetic_hair", "hair_alpha", "vignette_and_hair", "random_illuminant"]


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


def synthetic_vignette(images: torch.Tensor, generator: torch.Generator | None = None,
                       radius: tuple[float, float] = (0.6, 1.0), softness: float = 0.02) -> torch.Tensor:
    """A contact dermatoscope's dark vignette: per image, everything outside a disc set to black, the
    disc's centre within 5 % of the frame's centre and its radius a share ~ U[``radius``] of the
    frame's half-diagonal (1: it touches the corners; near 1 a corner may stay uncovered), its edge
    ramping to black over ``softness`` of the side. Images in [0, 1], [B, C, H, W]; the geometry
    is computed in float32 whatever their dtype."""
    b, _, h, w = images.shape
    f32 = dict(dtype=torch.float32, device=images.device)
    u = torch.rand(b, 3, generator=generator).to(**f32)
    half_diag = 0.5 * (h * h + w * w) ** 0.5
    r = (radius[0] + (radius[1] - radius[0]) * u[:, 0]) * half_diag
    cy = (h - 1) / 2 + (u[:, 1] - 0.5) * 0.1 * h
    cx = (w - 1) / 2 + (u[:, 2] - 0.5) * 0.1 * w
    yy = torch.arange(h, **f32)[None, :, None]
    xx = torch.arange(w, **f32)[None, None, :]
    d = ((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2).sqrt()
    ramp = max(softness * min(h, w), 1e-6)
    keep = ((r[:, None, None] - d) / ramp).clamp(0, 1)
    return images * keep[:, None].to(images.dtype)


def hair_alpha(h: int, w: int, p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, half_width: float,
               segments: int = 16) -> torch.Tensor:
    """[H, W] float32 coverage in [0, 1] of one hair: the quadratic Bézier curve from ``p0`` through
    control point ``p1`` to ``p2`` ((row, column) pixel coordinates), drawn as ``segments`` straight
    pieces, ``half_width`` pixels to each side of its axis, anti-aliased over one pixel. Only the
    curve's bounding box (plus the width) is computed."""
    device = p0.device
    t = torch.linspace(0, 1, segments + 1, dtype=torch.float32, device=device)[:, None]
    p0, p1, p2 = (p.to(torch.float32) for p in (p0, p1, p2))
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2                     # [S+1, 2]
    out = torch.zeros(h, w, dtype=torch.float32, device=device)
    reach = half_width + 1.5
    lo = (pts.amin(0) - reach).floor().clamp_min(0).long().tolist()
    hi = [min(int(v), n - 1) for v, n in zip((pts.amax(0) + reach).ceil().tolist(), (h, w))]
    if lo[0] > hi[0] or lo[1] > hi[1]:
        return out
    a, ab = pts[:-1], pts[1:] - pts[:-1]
    rel_y = torch.arange(lo[0], hi[0] + 1, dtype=torch.float32, device=device)[:, None, None] - a[:, 0]
    rel_x = torch.arange(lo[1], hi[1] + 1, dtype=torch.float32, device=device)[None, :, None] - a[:, 1]
    # each pixel's distance to each piece: to the piece's nearest point, clamped to its ends
    s = ((rel_y * ab[:, 0] + rel_x * ab[:, 1]) / (ab * ab).sum(1).clamp_min(1e-9)).clamp(0, 1)
    dist = ((rel_y - s * ab[:, 0]) ** 2 + (rel_x - s * ab[:, 1]) ** 2).sqrt().amin(-1)
    out[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1] = (half_width + 0.5 - dist).clamp(0, 1)
    return out


def synthetic_hair(images: torch.Tensor, generator: torch.Generator | None = None, count: tuple[int, int] = (2, 10),
                   width: tuple[float, float] = (1.0, 2.5)) -> torch.Tensor:
    """Dark hairs over the images: per image a number ~ U{``count``} of curves (:func:`hair_alpha`)
    from one random point of the frame to another, bent by a control point near their middle (off
    it by up to 20 % of the length along each axis), each of a width ~ U[``width``] pixels and a
    dark brown-to-black colour. Images in [0, 1], [B, 3, H, W]."""
    b, _, h, w = images.shape
    out = images.clone()
    size = torch.tensor([h - 1.0, w - 1.0], dtype=torch.float32)
    for i in range(b):
        for _ in range(int(torch.randint(count[0], count[1] + 1, (1,), generator=generator))):
            p0, p2, bend = (torch.rand(2, generator=generator) * size for _ in range(3))
            # gently curved: the control point near the middle
            p1 = (p0 + p2) / 2 + (bend / size - 0.5) * 0.4 * (p2 - p0).norm()
            half = float(width[0] + (width[1] - width[0]) * torch.rand(1, generator=generator)) / 2
            shade = 0.25 * float(torch.rand(1, generator=generator))
            alpha = hair_alpha(h, w, *(p.to(images.device) for p in (p0, p1, p2)), half).to(images.dtype)
            colour = torch.tensor([shade, 0.75 * shade, 0.6 * shade], dtype=images.dtype, device=images.device)
            out[i] = out[i] * (1 - alpha) + colour[:, None, None] * alpha
    return out


def vignette_and_hair(images: torch.Tensor, p_vignette: float, p_hair: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image gets a synthetic vignette with probability ``p_vignette`` and hairs with
    probability ``p_hair`` (issue #40: what differs between dermatoscopes besides colour)."""
    if p_vignette <= 0 and p_hair <= 0:
        return images
    for p, op in ((p_hair, synthetic_hair), (p_vignette, synthetic_vignette)):   # hairs under the vignette
        if p > 0:
            pick = (torch.rand(images.shape[0], generator=generator) < p).to(images.device)
            if pick.any():
                images = images.clone()
                images[pick] = op(images[pick], generator)
    return images


def random_illuminant(images: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random illuminant (von Kries): per image, each channel times its own gain ``exp(sigma * (z_c -
    mean(z)))`` with ``z ~ N(0, 1)^3``, so the gains' geometric mean is 1 (brightness is the colour
    jitter's business), then clipped to [0, 1]. Issue #40: indifference to the dermatoscope's light
    trained in, instead of a fixed Shades of Gray correction in front of the network. Images in [0, 1],
    [B, 3, H, W]; ``sigma`` 0 returns them unchanged."""
    if sigma <= 0:
        return images
    z = torch.randn(images.shape[0], 3, generator=generator)
    gains = torch.exp(sigma * (z - z.mean(1, keepdim=True))).to(device=images.device, dtype=images.dtype)
    return (images * gains[:, :, None, None]).clamp(0, 1)


class Augmenter:
    """Online random augmentation of a batch in [0, 1]; masks (optional) follow the geometry."""

    def __init__(self, config: AugmentConfig = AugmentConfig(), scale_jitter: float = 0.0, vignette: float = 0.0,
                 hair: float = 0.0, illuminant: float = 0.0):
        self.config = c = config
        self.scale_jitter, self.vignette, self.hair, self.illuminant = scale_jitter, vignette, hair, illuminant
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
        images = random_illuminant(self.color(images).clamp(0, 1), self.illuminant, generator)
        images = vignette_and_hair(images, self.vignette, self.hair, generator)
        if c.p_gridmask > 0:
            pick = (torch.rand(images.shape[0], generator=generator) < c.p_gridmask).to(images.device)
            if pick.any():
                images = images.clone()
                images[pick] = grid_mask(images[pick], *c.grid_d, c.grid_ratio, generator)[0]
        return images if masks is None else (images, masks)




def x7_variant(images: torch.Tensor, variant: int, config: AugmentConfig = AugmentConfig(),
               generator: torch.Generator | None = None, scale_jitter: float = 0.0, vignette: float = 0.0,
               hair: float = 0.0, illuminant: float = 0.0) -> torch.Tensor:
    """Variant ``variant`` of a batch in [0, 1]: 0 the original, then GridMask, flip left-right, flip
    up-down, brightness, contrast, hue, saturation (1..7); with ``scale_jitter``, variants 1..7 are
    also zoomed (:func:`random_zoom`); with ``illuminant``, lit by a random illuminant
    (:func:`random_illuminant`); with ``vignette`` / ``hair``, each image of variants 1..7 gets a
    synthetic vignette / hairs with that probability (:func:`vignette_and_hair`)."""
    if variant == 0:
        return images
    out = random_zoom(_x7_operation(images, variant, config, generator), scale_jitter, generator)
    return vignette_and_hair(random_illuminant(out, illuminant, generator), vignette, hair, generator)


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
