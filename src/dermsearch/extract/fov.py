"""The dermatoscope's field of view: the frame without the dark vignette around it.

Contact dermatoscopes image a round field; the camera's rectangular frame holds it with black
corners (often a black ring). Averaging a network's map over the whole frame mixes those corners into
the image's vector, by an amount that depends on the device, not on the lesion. :func:`field_of_view`
finds the vignette without knowing the device: the dark pixels (every channel below ``dark`` after a
median filter) in a connected region that holds a corner of the frame. A dark lesion inside the
field stays in it unless it touches the black region itself, and a frame whose "vignette" is tiny, or which
is mostly dark, counts as having none (the whole frame is the field), so that an image without a
vignette is pooled exactly as before.

With ``ExtractorConfig.fov`` (the default) the members' pooled vectors and the Grams are averaged
over the field (``models/pooling.py``), so a vignette changes the image's vectors as little as it can.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["field_of_view", "DARK", "MIN_VIGNETTE", "MIN_FIELD"]

DARK = 32             # a vignette pixel: every channel below this (0..255), after the median filter
MEDIAN = 5            # median filter size (px): JPEG noise and single bright pixels in the black ring
MIN_VIGNETTE = 0.01   # a dark corner region under this share of the frame is no vignette
MIN_FIELD = 0.30      # a field under this share of the frame is implausible: use the whole frame


def field_of_view(rgb: np.ndarray, dark: int = DARK, min_vignette: float = MIN_VIGNETTE,
                  min_field: float = MIN_FIELD) -> np.ndarray:
    """[H, W, 3] uint8 RGB -> [H, W] bool, True inside the field of view (see the module doc)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"field_of_view needs an [H, W, 3] RGB array, not shape {rgb.shape}")
    h, w = rgb.shape[:2]
    whole = np.ones((h, w), dtype=bool)
    brightest = rgb.max(axis=2)
    r = MEDIAN // 2 + 1     # a corner's filtered value is the median of raw pixels within r-1 of it
    corners = (brightest[:r, :r], brightest[:r, -r:], brightest[-r:, :r], brightest[-r:, -r:])
    if all(int(c.min()) >= dark for c in corners):
        return whole        # no corner can be dark after the filter: the common case, decided without it
    level = ndimage.median_filter(brightest, size=MEDIAN, mode="nearest")
    labels, n = ndimage.label(level < dark)
    if n == 0:
        return whole
    corner_labels = np.unique(labels[[0, 0, h - 1, h - 1], [0, w - 1, 0, w - 1]])
    corner_labels = corner_labels[corner_labels > 0]
    if corner_labels.size == 0:
        return whole
    outside = np.isin(labels, corner_labels)
    share = float(outside.mean())
    if share < min_vignette or 1.0 - share < min_field:
        return whole
    return ~outside
