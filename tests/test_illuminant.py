"""The random illuminant (issue #40): colour augmentation that trains indifference to the dermatoscope's
light instead of a fixed Shades of Gray correction. Checked against a naive per-pixel reference, for its
seeding and neutrality, through x7, the online augmenter and the frozen-stage cache (its setting:
tests/test_vignette_hair.py)."""

from __future__ import annotations

import numpy as np
import torch

from dermsearch.train.augment import AugmentConfig, Augmenter, random_illuminant, x7_variant
from dermsearch.train.config import ClassifierTrainConfig


def _images(b: int = 5, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 0.9


def _naive(images: torch.Tensor, sigma: float, seed: int) -> np.ndarray:
    """Pixel by pixel: the same normal draws, gains exp(sigma (z_c - mean z)), clipped."""
    z = torch.randn(images.shape[0], 3, generator=torch.Generator().manual_seed(seed)).double().numpy()
    x = images.double().numpy()
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        m = (z[i, 0] + z[i, 1] + z[i, 2]) / 3
        for c in range(3):
            gain = np.exp(sigma * (z[i, c] - m))
            for r in range(x.shape[2]):
                for col in range(x.shape[3]):
                    out[i, c, r, col] = min(max(x[i, c, r, col] * gain, 0.0), 1.0)
    return out


def test_against_a_naive_reference_and_its_gains_keep_the_brightness():
    x = _images()
    got = random_illuminant(x, 0.3, torch.Generator().manual_seed(7))
    np.testing.assert_allclose(got.double().numpy(), _naive(x, 0.3, 7), atol=1e-6)
    dark = x * 0.3                                           # nothing clips: the gains are the channel ratios
    lit = random_illuminant(dark, 0.3, torch.Generator().manual_seed(7))
    gains = (lit / dark).mean((2, 3))
    assert torch.allclose(lit / dark, gains[:, :, None, None].expand_as(dark), atol=1e-4)
    assert torch.allclose(gains.log().sum(1), torch.zeros(5), atol=1e-5)      # geometric mean 1
    assert (gains.log().std(1) > 0.01).all()                 # each image really gets a tint


def test_seeded_each_image_its_own_and_off_at_zero():
    x = _images()
    a = random_illuminant(x, 0.2, torch.Generator().manual_seed(1))
    assert torch.equal(a, random_illuminant(x, 0.2, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, random_illuminant(x, 0.2, torch.Generator().manual_seed(2)))
    ratios = (a / x).mean((2, 3))
    assert (ratios[0] - ratios[1]).abs().max() > 1e-3
    assert random_illuminant(x, 0.0) is x
    assert random_illuminant(x, 5.0, torch.Generator().manual_seed(1)).max() <= 1.0


def test_x7_and_online_apply_it_to_augmented_images_only():
    x = _images(3, 32)
    assert torch.equal(x7_variant(x, 0, illuminant=0.5), x)           # the original never
    flipped = x7_variant(x, 2, generator=torch.Generator().manual_seed(3), illuminant=0.5)
    want = random_illuminant(x.flip(-1), 0.5, torch.Generator().manual_seed(3))
    assert torch.allclose(flipped, want)
    plain = AugmentConfig(p_flip=0.0, p_color=0.0, p_gridmask=0.0)
    lit = Augmenter(plain, illuminant=0.5)(x, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(lit, random_illuminant(x, 0.5, torch.Generator().manual_seed(4)), atol=1e-6)
    assert torch.allclose(Augmenter(plain)(x, generator=torch.Generator().manual_seed(4)), x)


def test_the_cached_variants_get_it():
    from dermsearch.train.prefix import FrozenPrefix

    u8 = (_images(2, 24) * 255).round().to(torch.uint8)
    prefix = FrozenPrefix(None, 0, ClassifierTrainConfig(labels="l.csv", colour="none", illuminant=0.4), "cpu")
    got = prefix.variants(u8, 3, torch.Generator().manual_seed(5))
    assert torch.allclose(got, random_illuminant((u8.float() / 255).flip(-2), 0.4, torch.Generator().manual_seed(5)))
