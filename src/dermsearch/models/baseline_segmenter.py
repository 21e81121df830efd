"""Classical lesion segmentation: Otsu on the smoothed blue channel, then one component.

The classical baseline (``segmenter="otsu"``; the packaged U-Net is the default). Dermoscopic
lesions are darker than the skin around them, most of all in the blue channel (on 300 random
HAM10000 images at 128 px, mean Dice against the ground truth: blue 0.763, min-of-RGB 0.743, luminance 0.715). The dark
vignette of the dermatoscope's field of view touches the image border,
so components that hug the border are penalised and the most central large one wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.filters import gaussian, threshold_otsu

__all__ = ["OtsuSegmenter"]


@dataclass(frozen=True)
class OtsuSegmenter:
    sigma_fraction: float = 1 / 64  # Gaussian sigma as a fraction of the image side
    min_area_fraction: float = 0.002

    input_size = None  # works at whatever size it is given (dermsearch gives it the mask size)

    def segment_batch(self, rgb: np.ndarray) -> np.ndarray:
        """[B, H, W, 3] uint8 -> [B, H, W] bool."""
        return np.stack([self(a) for a in rgb])

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """``rgb``: HxWx3 uint8. Returns an HxW bool mask (the lesion)."""
        h, w = rgb.shape[:2]
        gray = gaussian(np.asarray(rgb, dtype=np.float64)[..., 2] / 255.0, sigma=max(h, w) * self.sigma_fraction)
        if float(gray.max() - gray.min()) < 1e-6:
            return np.zeros((h, w), dtype=bool)
        dark = gray < threshold_otsu(gray)
        labels, n = ndimage.label(dark)
        if n == 0:
            return np.zeros((h, w), dtype=bool)
        idx = np.arange(1, n + 1)
        area = ndimage.sum_labels(np.ones_like(labels), labels, idx)
        border = np.zeros((h, w), dtype=bool)
        border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
        border_px = ndimage.sum_labels(border, labels, idx)
        cy, cx = np.array(ndimage.center_of_mass(dark, labels, idx)).reshape(-1, 2).T
        dist = np.hypot((cy - (h - 1) / 2) / h, (cx - (w - 1) / 2) / w)  # 0 centre .. ~0.7 corner
        perimeter = 2 * (h + w)
        score = area * (1.0 - np.clip(border_px / (0.25 * perimeter), 0, 0.95)) * (1.0 - dist)
        score[area < self.min_area_fraction * h * w] = 0
        if score.max() <= 0:
            best = int(np.argmax(area))
        else:
            best = int(np.argmax(score))
        return ndimage.binary_fill_holes(labels == best + 1)
