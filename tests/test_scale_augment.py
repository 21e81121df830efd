"""Scale augmentation (issue #17): a random zoom about the centre, checked against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from dermsearch.errors import ConfigError
from dermsearch.train.augment import AugmentConfig, Augmenter, random_zoom, x7_variant, zoom_factors
from dermsearch.train.config import ClassifierTrainConfig


def _ramps(size: int = 33) -> torch.Tensor:
    """Channel 0 = the column index, channel 1 = the row index, channel 2 = constant."""
    col = torch.arange(size, dtype=torch.float32).expand(size, size)
    return torch.stack([col, col.T, torch.full((size, size), 7.0)])[None]


@pytest.mark.parametrize("f", [2.0, 1.25, 0.8, 0.5])
def test_zoom_about_the_centre_by_hand(f):
    """A zoom by f maps output pixel x to input c + (x - c) / f (c the centre): on a linear ramp,
    bilinear sampling gives exactly that wherever the source lies inside the image."""
    size = 33
    c = (size - 1) / 2
    out = random_zoom(_ramps(size), 0.0, factors=torch.tensor([f]))[0]
    x = torch.arange(size, dtype=torch.float32)
    expected = c + (x - c) / f
    inside = (expected >= 0) & (expected <= size - 1)
    assert torch.allclose(out[0][:, inside], expected[inside].expand(size, -1), atol=1e-3)   # columns
    assert torch.allclose(out[1][inside, :], expected[inside, None].expand(-1, size), atol=1e-3)   # rows
    assert torch.allclose(out[2], torch.full((size, size), 7.0), atol=1e-4)   # reflection fills, no black border
    if f < 1:   # shrinking reaches outside the image: filled by reflection about the edge, x -> -x (left)
        assert not inside.all()
        src = expected[~inside & (expected < 0)]
        assert torch.allclose(out[0][:, ~inside & (expected < 0)], (-src).expand(size, -1), atol=1e-3)


def test_zoom_factors_are_log_uniform_within_bounds_and_seeded():
    f = zoom_factors(20000, 0.25, torch.Generator().manual_seed(0))
    assert f.min() >= 1 / 1.25 - 1e-6 and f.max() <= 1.25 + 1e-6
    logs = torch.log(f)
    assert abs(float(logs.mean())) < 0.005                     # zooming in as often and as far as out
    assert float((f > 1).float().mean()) == pytest.approx(0.5, abs=0.02)
    assert float(logs.std()) == pytest.approx(math.log(1.25) / math.sqrt(3), rel=0.03)   # uniform in log
    assert torch.equal(f[:5], zoom_factors(5, 0.25, torch.Generator().manual_seed(0)))
    assert torch.equal(random_zoom(_ramps(), 0.0), _ramps())  # 0: untouched


def test_masks_follow_the_images_and_stay_binary():
    img = torch.zeros(4, 3, 32, 32)
    img[:, :, 10:22, 12:20] = 1.0
    mask = (img[:, :1] > 0.5).float()
    f = torch.tensor([1.5, 0.7, 1.0, 1.2])
    z, m = random_zoom(img, 0.0, masks=mask, factors=f)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert (m[:, 0] == (z[:, 0] > 0.5)).float().mean() > 0.97        # same geometry (edges may differ by a pixel)
    assert m[0].sum() > mask[0].sum() and m[1].sum() < mask[1].sum()   # magnified, shrunk
    torch.manual_seed(0)
    out, m2 = Augmenter(AugmentConfig(p_color=0.0, p_gridmask=0.0), scale_jitter=0.5)(img, mask)
    assert (m2[:, 0] == (out[:, 0] > 0.5)).float().mean() > 0.97
    assert not torch.equal(m2.sum((1, 2, 3)), mask.sum((1, 2, 3)))       # some were zoomed
    edge = torch.zeros(1, 3, 32, 32, dtype=torch.float64)                   # a lesion at the edge, shrunk: the
    edge[..., :, :6] = 1.0                                                   # mirrored fill is lesion in both
    z, m = random_zoom(edge, 0.0, masks=(edge[:, :1] > 0.5).float(), factors=torch.tensor([0.6]))
    assert m.dtype == z.dtype and torch.equal(m[:, 0] > 0.5, z[:, 0] > 0.5)


def test_x7_zooms_the_variants_but_never_the_original():
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(x7_variant(x, 0, scale_jitter=0.3), x)
    flipped = x7_variant(x, 2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(flipped, x.flip(-1))
    zoomed = x7_variant(x, 2, generator=torch.Generator().manual_seed(1), scale_jitter=0.3)
    f = zoom_factors(2, 0.3, torch.Generator().manual_seed(1))
    assert torch.allclose(zoomed, random_zoom(x.flip(-1), 0.0, factors=f))


def test_scale_jitter_setting_is_neutral_by_default_and_checked():
    from dermsearch.cli.cmd_train import _config
    from dermsearch.cli.main import build_parser
    from dermsearch.presets import get_preset
    from dermsearch.train.members import member_key as _member_key

    cfg = ClassifierTrainConfig(labels="l.csv")
    assert "scale_jitter" not in _member_key(cfg, 0)      # runs made before it existed keep their key
    assert _member_key(ClassifierTrainConfig(labels="l.csv", scale_jitter=0.2), 0)["scale_jitter"] == 0.2
    for bad in (dict(scale_jitter=-0.1), dict(scale_jitter=1.5), dict(scale_jitter=0.2, augment="none")):
        with pytest.raises(ConfigError, match="scale_jitter"):
            ClassifierTrainConfig(**bad)
    args = build_parser().parse_args(["train", "classifier", "--labels", __file__, "--out", "run",
                                      "--scale-jitter", "0.25"])       # --labels must exist (checked while parsing)
    assert _config(args, get_preset("default").classifier).scale_jitter == 0.25


@pytest.mark.slow
def test_training_with_scale_jitter_caches_zoomed_variants_apart(tmp_path):
    """The x7 cache of frozen-stage outputs holds zoomed variants under its own key (never reused for
    a run without zoom), and the online path trains with it too."""
    from dermsearch.train.classifier import train_classifier

    from .test_classifier import _synthetic_set

    labels = _synthetic_set(tmp_path / "data")
    tiny = dict(labels=str(labels), members=1, image_size=32, epochs=1, head_epochs=1, batch_size=8, feature_dim=16,
                tta=1)
    cache = tmp_path / "cache"
    for jitter in (0.0, 0.3):
        train_classifier(ClassifierTrainConfig(**tiny, scale_jitter=jitter), tmp_path / f"x7-{jitter}",
                         log=lambda m: None, progress=False, cache_dir=cache)
    files = sorted(cache.glob("train-*-x8-*.npy"))
    assert len(files) == 2                                   # one per setting
    import numpy as np
    a, b = (np.load(f, mmap_mode="r") for f in files)
    assert np.array_equal(a[0::8], b[0::8]) and not np.array_equal(a[2::8], b[2::8])   # originals alike, variants not
    assert len(list(cache.glob("val-*.npy"))) == 1           # val holds originals only: shared by both
    train_classifier(ClassifierTrainConfig(**tiny, augment="online", scale_jitter=0.3), tmp_path / "online",
                     log=lambda m: None, progress=False)
    assert (tmp_path / "online" / "ensemble.safetensors").is_file()
