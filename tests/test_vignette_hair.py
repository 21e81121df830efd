"""Synthetic vignettes and hairs (issue #40): what differs between dermatoscopes besides colour, as
training augmentation. The vignette against the product's own field-of-view detector, a hair's
coverage against a naive reference, the probabilities, x7 and the settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dermsearch.errors import ConfigError
from dermsearch.extract.fov import field_of_view
from dermsearch.train.augment import (
    AugmentConfig,
    Augmenter,
    hair_alpha,
    synthetic_hair,
    synthetic_vignette,
    vignette_and_hair,
    x7_variant,
)
from dermsearch.train.config import NEUTRAL_SETTINGS, ClassifierTrainConfig


def _skin(b: int = 4, size: int = 96) -> torch.Tensor:
    """Skin-like images: a warm constant with a darker disc (a lesion) in the middle."""
    x = torch.empty(b, 3, size, size)
    x[:, 0], x[:, 1], x[:, 2] = 0.85, 0.65, 0.55
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 6) ** 2
    x[:, :, disc] *= 0.5
    return x


def test_a_synthetic_vignette_is_the_one_the_field_of_view_finds():
    x = _skin()
    out = synthetic_vignette(x, torch.Generator().manual_seed(0), radius=(0.7, 0.8))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    c = x.shape[-1] // 2
    assert torch.equal(out[:, :, c, c], x[:, :, c, c])                 # the lesion is left alone
    assert (out[:, :, 0, 0] == 0).all() and (out[:, :, -1, -1] == 0).all()    # the corners are black
    for i in range(len(x)):
        rgb = (out[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        field = field_of_view(rgb)
        inside = (out[i].sum(0) > 0.05).numpy()
        assert (field == inside).mean() > 0.97, i                      # the product's detector agrees
        assert 0.05 < 1 - field.mean() < 0.5
    assert torch.equal(out, synthetic_vignette(x, torch.Generator().manual_seed(0), radius=(0.7, 0.8)))
    wide = synthetic_vignette(x, torch.Generator().manual_seed(0), radius=(1.5, 1.5))
    assert torch.equal(wide, x)                                         # a disc past the corners: no vignette


def test_hair_coverage_against_a_naive_reference():
    p0, p1, p2 = torch.tensor([5.0, 3.0]), torch.tensor([30.0, 40.0]), torch.tensor([10.0, 60.0])
    got = hair_alpha(48, 64, p0, p1, p2, half_width=1.0, segments=32)
    t = torch.linspace(0, 1, 33)[:, None]
    pts = ((1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2).numpy()
    dense = np.concatenate([a + np.linspace(0, 1, 400)[:, None] * (b - a) for a, b in zip(pts[:-1], pts[1:])])
    yy, xx = np.mgrid[:48, :64]
    d = np.sqrt((yy[..., None] - dense[:, 0]) ** 2 + (xx[..., None] - dense[:, 1]) ** 2).min(-1)
    want = np.clip(1.5 - d, 0, 1)
    assert np.abs(got.numpy() - want).max() < 0.02
    assert got[5, 3] == 1 and got[10, 60] == 1 and got[47, 0] == 0    # both ends covered, far pixels not


def test_hairs_darken_a_thin_part_of_the_image_and_are_seeded():
    x = _skin()
    out = synthetic_hair(x, torch.Generator().manual_seed(3), count=(3, 3))
    assert (out <= x + 1e-6).all() and out.min() >= 0                  # dark hairs only darken skin
    changed = ((x - out).abs().sum(1) > 0.05).float().mean((1, 2))
    assert (changed > 0.005).all() and (changed < 0.3).all()
    assert torch.equal(out, synthetic_hair(x, torch.Generator().manual_seed(3), count=(3, 3)))
    assert not torch.equal(out[0], out[1])                             # each image its own hairs
    assert torch.equal(synthetic_hair(x, count=(0, 0)), x)


def test_probabilities_x7_and_the_online_augmenter():
    x = _skin(8)
    assert vignette_and_hair(x, 0.0, 0.0) is x
    every = vignette_and_hair(x, 1.0, 1.0, torch.Generator().manual_seed(1))
    assert ((every - x).abs().flatten(1).amax(1) > 0.1).all()
    g = torch.Generator().manual_seed(1)                               # the same draws, in the stated order:
    torch.rand(8, generator=g)                                         # who gets hairs, their hairs,
    hairs = synthetic_hair(x, g)
    torch.rand(8, generator=g)                                         # who gets a vignette, the vignette on top
    assert torch.equal(every, synthetic_vignette(hairs, g))
    some = vignette_and_hair(x, 0.5, 0.0, torch.Generator().manual_seed(2))
    hit = (some[:, :, 0, 0] == 0).all(1)
    assert 0 < int(hit.sum()) < 8 and torch.equal(some[~hit], x[~hit])
    assert torch.equal(x7_variant(x, 0, vignette=1.0, hair=1.0), x)    # the original never
    flipped = x7_variant(x, 2, generator=torch.Generator().manual_seed(4), vignette=1.0)
    assert (flipped[:, :, 0, 0] == 0).all() and torch.equal(flipped[:, :, 48, 48], x.flip(-1)[:, :, 48, 48])
    aug = Augmenter(AugmentConfig(p_flip=0.0, p_color=0.0, p_gridmask=0.0), vignette=1.0)
    assert (aug(x, generator=torch.Generator().manual_seed(5))[:, :, 0, 0] == 0).all()


@pytest.mark.parametrize("name, value, flags", [("vignette", 0.3, ()), ("hair", 0.4, ()),
                                                  ("illuminant", 0.16, ("--colour", "none"))])
def test_the_settings_are_neutral_by_default_checked_and_flags(name, value, flags):
    """Each augmentation setting of issue #40 (the illuminant's own tests: tests/test_illuminant.py)."""
    from dermsearch.cli.cmd_train import _config
    from dermsearch.cli.main import build_parser
    from dermsearch.presets import get_preset
    from dermsearch.train.members import member_key

    assert NEUTRAL_SETTINGS[name] == 0.0
    assert name not in member_key(ClassifierTrainConfig(labels="l.csv"), 0)        # old runs keep their key
    assert member_key(ClassifierTrainConfig(labels="l.csv", **{name: value}), 0)[name] == value
    for bad in ({name: -0.1}, {name: 1.5}, {name: 0.2, "augment": "none"}, {name: 0.2, "init_members": "default"}):
        with pytest.raises(ConfigError, match=name):
            ClassifierTrainConfig(**bad)
    args = build_parser().parse_args(["train", "classifier", "--labels", __file__, "--out", "run",
                                      *flags, f"--{name}", str(value)])
    assert getattr(_config(args, get_preset("default").classifier), name) == value


def test_the_cached_x7_variants_get_them():
    """What the frozen-stage cache is built from: FrozenPrefix.variants passes the settings on."""
    from dermsearch.train.prefix import FrozenPrefix

    u8 = (_skin(3) * 255).round().to(torch.uint8)
    cfg = ClassifierTrainConfig(labels="l.csv", vignette=1.0)
    prefix = FrozenPrefix(None, 0, cfg, "cpu")
    assert torch.equal(prefix.variants(u8, 0, torch.Generator().manual_seed(0)), u8.float() / 255)
    flipped = prefix.variants(u8, 2, torch.Generator().manual_seed(0))
    assert (flipped[:, :, 0, 0] == 0).all() and (flipped[:, :, 48, 48] > 0).all()
    plain = FrozenPrefix(None, 0, ClassifierTrainConfig(labels="l.csv"), "cpu")
    assert torch.equal(plain.variants(u8, 2, torch.Generator().manual_seed(0)), (u8.float() / 255).flip(-1))


def test_half_precision_images_get_the_float32_geometry():
    x = _skin(2, 64)
    for dtype in (torch.bfloat16, torch.float16):
        a = synthetic_vignette(x.to(dtype), torch.Generator().manual_seed(0))
        b = synthetic_vignette(x, torch.Generator().manual_seed(0))
        assert a.dtype == dtype and (a.float() - b).abs().max() < 0.02
        h = synthetic_hair(x.to(dtype), torch.Generator().manual_seed(0))
        assert (h.float() - synthetic_hair(x, torch.Generator().manual_seed(0))).abs().max() < 0.02


@pytest.mark.slow
def test_training_with_vignettes_and_hair_caches_its_variants_apart(tmp_path):
    from dermsearch.train.classifier import train_classifier

    from .test_classifier import _synthetic_set

    labels = _synthetic_set(tmp_path / "data")
    tiny = dict(labels=str(labels), members=1, image_size=32, epochs=1, head_epochs=1, batch_size=8, feature_dim=16,
                tta=1)
    cache = tmp_path / "cache"
    for extra in ({}, {"vignette": 0.5, "hair": 0.5}):
        train_classifier(ClassifierTrainConfig(**tiny, **extra), tmp_path / f"x7-{len(extra)}", log=lambda m: None,
                         progress=False, cache_dir=cache)
    assert len(list(cache.glob("train-*-x8-*.npy"))) == 2                 # never reused across settings
    train_classifier(ClassifierTrainConfig(**tiny, augment="online", vignette=0.5, hair=0.5), tmp_path / "online",
                     log=lambda m: None, progress=False)
    assert (tmp_path / "online" / "ensemble.safetensors").is_file()
