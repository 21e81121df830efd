"""Colour constancy: Shades of Gray (Finlayson & Trezzi 2004), as used for dermoscopy by Barata et al. 2015.

The illuminant of an image is estimated per channel as the Minkowski p-mean of its pixel values,
e_c = (mean_x I_c(x)^p)^(1/p); the image is then divided by e / (|e| / sqrt(3)), so a neutral
(grey) illuminant leaves it unchanged, and clipped to [0, 255]. p = 1 is Gray World, p -> inf is
max-RGB; p = 6 is the usual choice for dermoscopy.

The same function runs at training, indexing and query time (``ExtractorConfig.colour``), on the
resized uint8 image, before the network's normalisation. Pure functions, numpy and torch.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..names import COLOUR_METHODS

__all__ = ["COLOUR_METHODS", "shades_of_gray", "shades_of_gray_batch", "apply_colour"]



def shades_of_gray(image: np.ndarray, p: float = 6.0) -> np.ndarray:
    """[H, W, 3] uint8 -> [H, W, 3] uint8 with the estimated illuminant removed."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an [H, W, 3] image, got shape {image.shape}")
    x = image.astype(np.float64)
    e = np.power(np.mean(np.power(x, p), axis=(0, 1)), 1.0 / p)
    norm = np.sqrt(np.sum(e * e))
    if norm == 0:                                   # an all-black image: nothing to correct
        return image.copy()
    gain = norm / (np.sqrt(3.0) * np.maximum(e, 1e-6))
    return np.clip(np.rint(x * gain), 0, 255).astype(np.uint8)


def shades_of_gray_batch(images, p: float = 6.0, chunk: int = 256):
    """[B, 3, H, W] uint8 torch tensor -> the same, each image corrected as ``shades_of_gray`` does.

    Works ``chunk`` images at a time (float64 intermediates are 16x the uint8 input: a whole
    training set at once would need tens of GB)."""
    import torch

    out = torch.empty_like(images)
    for lo in range(0, images.shape[0], chunk):
        x = images[lo:lo + chunk].to(torch.float64)
        e = x.pow(p).mean(dim=(2, 3)).pow(1.0 / p)                     # [b, 3]
        norm = e.norm(dim=1, keepdim=True)
        gain = torch.where(norm > 0, norm / (3.0 ** 0.5 * e.clamp_min(1e-6)), torch.ones_like(e))
        out[lo:lo + chunk] = (x * gain[:, :, None, None]).round().clamp(0, 255).to(torch.uint8)
    return out


def apply_colour(image: np.ndarray, method: str) -> np.ndarray:
    """Apply the named colour method to one [H, W, 3] uint8 image."""
    if method == "none":
        return image
    if method == "shades-of-gray":
        return shades_of_gray(image)
    raise ConfigError(f"unknown colour method {method!r}; valid: {', '.join(COLOUR_METHODS)}")
