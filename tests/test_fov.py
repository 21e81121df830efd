"""The field of view (extract/fov.py) against hand-built images and a naive pooling reference."""

import numpy as np
import pytest
import torch

from dermsearch.extract.fov import field_of_view
from dermsearch.models.pooling import field_weights, masked_mean

SKIN = (205, 150, 125)


def vignetted(size=(150, 200), radius_frac=0.55, lesion=True):
    """A 4:3 frame: skin inside a centred disc of radius 0.55 x height, black outside (with a little
    JPEG-like noise), and a near-black lesion in the middle."""
    h, w = size
    rng = np.random.default_rng(0)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = SKIN
    yy, xx = np.mgrid[:h, :w]
    r2 = (yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2
    outside = r2 > (radius_frac * h) ** 2
    img[outside] = rng.integers(0, 12, size=(int(outside.sum()), 3))
    if lesion:
        img[r2 < (0.15 * h) ** 2] = (12, 8, 6)     # darker than the vignette threshold, but inside the field
    return img, ~outside


def test_field_is_the_disc_and_keeps_a_black_lesion():
    img, truth = vignetted()
    fov = field_of_view(img)
    assert fov.shape == truth.shape and fov.dtype == bool
    disagree = (fov != truth).mean()
    assert disagree < 0.01, disagree                  # only the disc's rim, blurred by the median filter
    h, w = truth.shape
    assert fov[h // 2, w // 2]                        # the near-black lesion is not vignette
    assert not fov[0, 0] and not fov[-1, -1]


def test_no_vignette_is_the_whole_frame():
    img, _ = vignetted(lesion=True, radius_frac=10.0)   # no black outside at all
    assert field_of_view(img).all()
    img[:2, :2] = 0                                     # a dark speck in a corner: under 1 % of the frame
    assert field_of_view(img).all()
    assert field_of_view(np.zeros((64, 64, 3), np.uint8)).all()   # all dark: implausible field, whole frame


def test_dark_lesion_touching_an_edge_but_no_corner_stays_in_the_field():
    img = np.empty((100, 100, 3), np.uint8)
    img[:] = SKIN
    img[40:60, :30] = 5                                 # dark, joined to the left edge, not to a corner
    assert field_of_view(img).all()


def test_field_of_view_refuses_non_rgb():
    with pytest.raises(ValueError, match="RGB"):
        field_of_view(np.zeros((10, 10), np.uint8))


def naive_masked_mean(fmap, weights):
    b, c, h, w = fmap.shape
    out = torch.zeros(b, c, dtype=torch.float64)
    for i in range(b):
        total = float(weights[i].sum())
        if total <= 0:
            out[i] = fmap[i].double().mean(dim=(1, 2))
            continue
        for y in range(h):
            for x in range(w):
                out[i] += float(weights[i, 0, y, x]) * fmap[i, :, y, x].double()
        out[i] /= total
    return out


def test_masked_mean_matches_the_naive_sum():
    g = torch.Generator().manual_seed(0)
    fmap = torch.randn(3, 5, 7, 7, generator=g)
    weights = torch.rand(3, 1, 7, 7, generator=g)
    weights[2] = 0                                      # an empty field: the plain average
    got = masked_mean(fmap, weights)
    assert torch.allclose(got.double(), naive_masked_mean(fmap, weights), atol=1e-5)
    assert torch.allclose(masked_mean(fmap, torch.ones(3, 1, 7, 7)), fmap.mean(dim=(2, 3)), atol=1e-6)
    assert torch.equal(masked_mean(fmap, None), fmap.mean(dim=(2, 3)))


def test_pooling_over_the_field_ignores_the_black_corners():
    """A map that is c in every cell the hand-built field reaches and 0 in the cells wholly in the
    vignette: the frame's average is diluted by the corners, the field's average is exactly c."""
    img, _ = vignetted(size=(224, 224), radius_frac=0.5, lesion=False)
    fov = torch.from_numpy(field_of_view(img)[None, None].astype(np.float32))
    weights = field_weights(fov, (7, 7))
    assert weights.shape == (1, 1, 7, 7)
    assert float(weights[0, 0, 3, 3]) == 1.0 and float(weights[0, 0, 0, 0]) < 0.2
    fmap = 3.0 * (weights > 0).float().expand(1, 4, 7, 7)
    frame = masked_mean(fmap, None)
    field = masked_mean(fmap, weights)
    assert float(frame[0, 0]) < 2.9                     # the corner cells pull the frame's average down
    assert torch.allclose(field, torch.full((1, 4), 3.0))


def test_field_weights_are_cell_shares():
    fields = torch.zeros(1, 1, 8, 8)
    fields[..., :4, :] = 1
    fields[..., 4:6, :2] = 1
    wgt = field_weights(fields, (2, 2))
    assert torch.allclose(wgt[0, 0], torch.tensor([[1.0, 1.0], [0.25, 0.0]]))
    odd = field_weights(torch.ones(1, 1, 10, 10), (3, 3))   # not a whole number of pixels per cell
    assert torch.allclose(odd, torch.ones(1, 1, 3, 3))


def reference_field(rgb):
    """The algorithm as docs/usage.md states it (no shortcut): median 5, < 32, corner regions, 1 %/70 %."""
    from scipy import ndimage

    level = ndimage.median_filter(rgb.max(axis=2), size=5, mode="nearest")
    labels, _ = ndimage.label(level < 32)
    corners = [c for c in np.unique(labels[[0, 0, -1, -1], [0, -1, 0, -1]]) if c > 0]
    vignette = np.isin(labels, corners)
    return ~vignette if 0.01 <= vignette.mean() <= 0.70 else np.ones_like(vignette)


def test_the_shortcut_agrees_with_the_stated_algorithm():
    rng = np.random.default_rng(3)
    for trial in range(60):
        img = np.full((48, 64, 3), SKIN, np.uint8)
        for _ in range(trial % 6):              # dark blobs, some touching corners, some not
            y, x = rng.integers(0, 48), rng.integers(0, 64)
            r = rng.integers(1, 14)
            yy, xx = np.mgrid[:48, :64]
            img[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = rng.integers(0, 40, 3)
        if trial % 7 == 0:
            img[:3, :3] = rng.integers(0, 60, (3, 3, 3))     # noise right at a corner
        np.testing.assert_array_equal(field_of_view(img), reference_field(img))
