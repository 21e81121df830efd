"""Lesion-aware Gram statistics, fitted layer weights and per-layer style explanations."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from dermsearch.evaluate.gram_weights import (
    cross_validated,
    fit_gram_weights,
    layer_distance_stack,
    macro_precision_at_k,
    save_gram_weights,
)
from dermsearch.extract import Extractor
from dermsearch.extract.extractor import resolve_gram_weights
from dermsearch.extract.gram import (
    average_grams,
    dilate_masks,
    gram_pool_weights,
    layer_losses,
    masked_gram_matrix,
    style_dim,
    style_layout,
    style_vector,
)

from .conftest import TINY, lesion_image


def _lesion_and_background(seed=0, c=6, h=8, w=8):
    """A feature map whose lesion cells and background cells come from different distributions."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), bool)
    mask[2:6, 1:5] = True
    f = np.where(mask[None], rng.normal(3.0, 1.0, (c, h, w)), rng.normal(-1.0, 0.3, (c, h, w)))
    return f, mask


def test_masked_gram_is_the_gram_of_the_lesion_cells_alone():
    f, mask = _lesion_and_background()
    cells = f[:, mask]                                   # C x n, by hand
    want = cells @ cells.T / mask.sum()
    got = masked_gram_matrix(torch.from_numpy(f)[None], torch.from_numpy(mask.astype(float))[None, None])[0]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    whole = f.reshape(f.shape[0], -1)
    assert not np.allclose(want, whole @ whole.T / whole.shape[1])   # the background really differs


def test_empty_mask_falls_back_to_the_whole_map():
    f, _ = _lesion_and_background()
    t = torch.from_numpy(f)[None]
    empty = torch.zeros(1, 1, 8, 8, dtype=t.dtype)
    whole = f.reshape(f.shape[0], -1)
    np.testing.assert_allclose(masked_gram_matrix(t, empty)[0].numpy(), whole @ whole.T / 64, rtol=1e-12)


def test_pool_weights_are_the_fraction_of_each_cell_inside_the_mask():
    m = np.zeros((16, 16), np.float32)
    m[0:4, 0:4] = 1          # cell (0, 0) of a 4x4 grid: full
    m[4:6, 4:8] = 1          # cell (1, 1): half
    w = gram_pool_weights(torch.from_numpy(m)[None, None], (4, 4))[0, 0].numpy()
    assert w[0, 0] == 1.0 and w[1, 1] == 0.5 and w.sum() == 1.5
    skin = gram_pool_weights(torch.from_numpy(m)[None, None], (4, 4), outside=True)[0, 0].numpy()
    np.testing.assert_allclose(skin, 1 - w)
    odd = gram_pool_weights(torch.from_numpy(m)[None, None], (3, 3))   # not a divisor: adaptive pooling
    assert odd.shape == (1, 1, 3, 3) and 0 < float(odd.sum()) < 9


def test_dilation_matches_scipy():
    rng = np.random.default_rng(1)
    m = rng.random((40, 40)) > 0.97
    for r in (0, 1, 3):
        got = dilate_masks(torch.from_numpy(m.astype(np.float32))[None, None], r)[0, 0].numpy() > 0
        want = ndimage.binary_dilation(m, np.ones((2 * r + 1, 2 * r + 1)), iterations=1) if r else m
        assert np.array_equal(got, want)
    w = gram_pool_weights(torch.from_numpy(m.astype(np.float32))[None, None], (40, 40), margin=0.05)
    assert np.array_equal(w[0, 0].numpy() > 0, ndimage.binary_dilation(m, np.ones((5, 5))))


def test_style_loss_stays_the_exact_squared_distance_for_lesion_grams():
    rng = np.random.default_rng(2)
    taps = [[torch.from_numpy(rng.normal(size=(2, c, s, s)))] for c, s in ((4, 8), (6, 4))]
    member_taps = [[t[0] for t in taps]]
    masks = torch.from_numpy((rng.random((2, 1, 16, 16)) > 0.5).astype(np.float64))
    for pool, n in (("lesion", 2), ("lesion+skin", 4)):
        grams = average_grams(member_taps, masks, pool, margin=0.1)
        assert len(grams) == n
        betas = [0.5, 2.0, 0.25, 1.0][:n]
        v = style_vector(grams, betas).astype(np.float64)
        chans = [g.shape[-1] for g in grams]
        assert v.shape == (2, style_dim(chans))
        ls = sum(b * b * float(((g[0] - g[1]) ** 2).sum()) for g, b in zip(grams, betas))   # eq. 6
        np.testing.assert_allclose(((v[0] - v[1]) ** 2).sum(), ls, rtol=1e-5)
        layout = style_layout([4, 6], pool, betas)
        per_layer = layer_losses(v[0], v[1:], layout)[0]
        np.testing.assert_allclose(per_layer.sum(), ((v[0] - v[1]) ** 2).sum(), rtol=1e-10)
        np.testing.assert_allclose(per_layer, [b * b * float(((g[0] - g[1]) ** 2).sum())
                                               for g, b in zip(grams, betas)], rtol=1e-5)
    with pytest.raises(ValueError, match="needs lesion masks"):
        average_grams(member_taps, None, "lesion")
    with pytest.raises(KeyError, match="valid: image, lesion, lesion\\+skin"):
        average_grams(member_taps, masks, "nope")


def _synthetic_layers(seed=0, q=60, n=300, classes=3):
    """Three layers of distances; only layer 2 carries the label."""
    rng = np.random.default_rng(seed)
    ql, cl = rng.integers(0, classes, q), rng.integers(0, classes, n)
    noise = [rng.random((q, n)) * s for s in (100.0, 1.0, 5.0)]
    informative = np.where(ql[:, None] == cl[None, :], 0.2, 1.0) + rng.random((q, n)) * 0.5
    stack = np.stack([noise[0], informative, noise[2]]).astype(np.float32)
    return stack, np.ones((q, n), bool), ql.astype(str), cl.astype(str)


def test_fit_puts_the_informative_layer_first():
    stack, valid, ql, cl = _synthetic_layers()
    fit = fit_gram_weights(stack, valid, ql, cl, k=5, channels=[16, 24, 40])
    assert int(np.argmax(fit.shares)) == 1
    assert abs(sum(fit.shares) - 1) < 1e-9 and min(fit.betas) >= 0
    w = np.asarray(fit.betas, dtype=np.float32) ** 2
    assert macro_precision_at_k(np.tensordot(w, stack, 1), valid, ql, cl) == pytest.approx(fit.score)
    equal = macro_precision_at_k(stack.sum(0), valid, ql, cl)        # the noisy layer 1 dominates a plain sum
    assert fit.score > equal + 0.3
    cv = cross_validated(stack, valid, ql, cl, np.arange(len(ql)), channels=[16, 24, 40])
    assert cv["mean"] > 0.9 and len(cv["folds"]) == 2


def test_layer_distance_stack_divides_out_the_betas():
    rng = np.random.default_rng(3)
    betas = [0.5, 3.0]
    layout = style_layout([2, 3], "image", betas)
    raw = rng.normal(size=(5, 3 + 6))
    stored = raw.copy()
    stored[:, :3] *= betas[0]
    stored[:, 3:] *= betas[1]
    st = layer_distance_stack(stored[:2], stored[2:], layout)
    np.testing.assert_allclose(st[1, 0, 1], ((raw[0, 3:] - raw[3, 3:]) ** 2).sum(), rtol=1e-5)
    np.testing.assert_allclose((np.asarray(betas)[:, None, None] ** 2 * st).sum(0),
                               ((stored[:2, None] - stored[None, 2:]) ** 2).sum(-1), rtol=1e-5)


def test_gram_weights_file_round_trip_and_checks(tmp_path):
    ex_cfg = dataclasses.replace(TINY, gram_pool="lesion", gram_margin=0.05)
    chans = (16, 24, 40, 80, 112, 192, 320)
    stack, valid, ql, cl = _synthetic_layers()
    fit = fit_gram_weights(stack, valid, ql, cl, channels=[16, 24, 40])
    fit.betas = [0.1 * (i + 1) for i in range(7)]
    path = tmp_path / "w.json"
    save_gram_weights(path, fit, {"gram_pool": "lesion", "gram_margin": 0.05, "tap_channels": list(chans)})
    cfg = dataclasses.replace(ex_cfg, gram_weights=str(path))
    assert resolve_gram_weights(cfg, chans) == pytest.approx(fit.betas)
    with pytest.raises(ValueError, match="fitted for"):
        resolve_gram_weights(dataclasses.replace(cfg, gram_margin=0.1), chans)
    bad = json.loads(path.read_text())
    bad["betas"] = [-1.0] * 7
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="non-negative"):
        resolve_gram_weights(cfg, chans)
    with pytest.raises(ValueError, match="valid: inverse-channels, ones, learned"):
        resolve_gram_weights(dataclasses.replace(cfg, gram_weights="squares"), chans)


def test_extractor_pools_grams_over_the_lesion_and_records_it():
    images = [lesion_image(i) for i in range(3)]
    plain = Extractor(TINY)
    lesion = Extractor(dataclasses.replace(TINY, gram_pool="lesion", gram_margin=0.05))
    both = Extractor(dataclasses.replace(TINY, gram_pool="lesion+skin"))
    assert lesion.fingerprint != plain.fingerprint != both.fingerprint
    assert lesion.style_dim == plain.style_dim and both.style_dim == 2 * plain.style_dim
    a, b, c = plain.extract(images), lesion.extract(images), both.extract(images)
    assert np.array_equal(a.features, b.features) and np.array_equal(a.masks, b.masks)
    assert not np.allclose(a.styles, b.styles)
    assert [e["region"] for e in both.style_layout[:2]] == ["lesion", "skin"]
    assert both.style_layout[-1]["offset"] + both.style_layout[-1]["size"] == both.style_dim
    with pytest.raises(ValueError, match="needs masks"):
        Extractor(dataclasses.replace(TINY, gram_pool="lesion", masks=False))


def test_onnx_backend_matches_torch_for_lesion_grams(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("DERMSEARCH_CACHE", str(tmp_path))
    cfg = dataclasses.replace(TINY, gram_pool="lesion+skin", gram_margin=0.1)
    images = [lesion_image(i) for i in range(4)]
    t = Extractor(cfg).extract(images)
    o = Extractor(cfg, backend="onnx").extract(images)
    assert np.abs(t.styles - o.styles).max() <= 1e-4 * max(1.0, float(np.abs(t.styles).max()))
