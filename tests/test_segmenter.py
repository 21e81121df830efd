"""The Otsu baseline segmenter on synthetic lesions (known truth) and on real HAM10000 masks."""

from __future__ import annotations

import csv

import numpy as np
from PIL import Image

from dermsearch.extract.images import load_image, resize_rgb
from dermsearch.extract.masks import pack_masks, resize_mask, unpack_mask
from dermsearch.models.baseline_segmenter import OtsuSegmenter

from .conftest import SHARED, require_data


def _dice(a, b):
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


def test_finds_dark_lesion_and_ignores_dark_vignette():
    size = 128
    yy, xx = np.mgrid[:size, :size]
    lesion = ((yy - 70) / 25) ** 2 + ((xx - 60) / 35) ** 2 <= 1
    vignette = np.hypot(yy - size / 2, xx - size / 2) > 0.62 * size  # dark corners of the scope
    rng = np.random.default_rng(0)
    img = np.full((size, size, 3), [220, 170, 150], float)
    img[lesion] = [110, 60, 50]
    img[vignette] = [15, 15, 15]
    img += rng.normal(0, 8, img.shape)
    mask = OtsuSegmenter()(np.clip(img, 0, 255).astype(np.uint8))
    assert _dice(mask, lesion) > 0.9
    assert not (mask & vignette).any()


def test_blank_image_gives_empty_mask():
    assert not OtsuSegmenter()(np.full((32, 32, 3), 128, np.uint8)).any()


def test_pack_round_trip():
    rng = np.random.default_rng(1)
    m = rng.random((3, 16, 16)) < 0.3
    packed = pack_masks(m)
    assert packed.shape == (3, 32)
    for i in range(3):
        np.testing.assert_array_equal(unpack_mask(packed[i], 16), m[i])


def test_real_ham10000_masks_mean_dice():
    root = SHARED / "ham10000-600"
    require_data(root / "labels.csv")
    with open(root / "labels.csv") as f:
        rows = list(csv.DictReader(f))[:40]
    seg = OtsuSegmenter()
    dice = []
    for r in rows:
        rgb = resize_rgb(load_image(root / r["image_path"]), 128)
        truth = resize_mask(np.asarray(Image.open(root / r["mask_path"])) > 127, 128)
        dice.append(_dice(seg(rgb), truth))
    # a classical baseline: far from a learned model, far above chance
    assert np.mean(dice) > 0.6
