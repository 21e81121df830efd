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
    masked_gram_matrix,
    style_dim,
    style_layout,
    style_vector,
)
from dermsearch.runtime import Runtime
from dermsearch.search.explain import layer_losses

from .conftest import TINY, TORCH, lesion_image


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


def test_fit_follows_a_given_objective():
    """An objective that rewards layer 3 alone (the macro-P@k fit would pick layer 2) is followed,
    and the fit's score is that objective's value."""
    stack, valid, ql, cl = _synthetic_layers()
    seen = []

    def objective(w):
        seen.append(w.dtype)
        return float(w[2] / w.sum()) if w.sum() > 0 else -1.0

    fit = fit_gram_weights(stack, valid, ql, cl, k=5, channels=[16, 24, 40], objective=objective)
    assert int(np.argmax(fit.shares)) == 2 and fit.shares[2] > 0.99
    w = np.asarray(fit.betas, dtype=np.float64) ** 2
    assert fit.score == pytest.approx(w[2] / w.sum(), rel=1e-5)
    assert seen and all(d == np.float32 for d in seen)


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
    save_gram_weights(path, fit, {"gram_pool": "lesion", "gram_margin": 0.05, "tap_channels": list(chans),
                                                                "colour": ex_cfg.colour})
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


def test_extractor_pools_grams_over_the_lesion_and_records_it(tiny_extractor):
    images = [lesion_image(i) for i in range(3)]
    plain = tiny_extractor
    lesion = Extractor(dataclasses.replace(TINY, gram_pool="lesion", gram_margin=0.05), TORCH)
    assert Extractor(dataclasses.replace(TINY, gram_norm="l2"), TORCH).fingerprint != plain.fingerprint
    both = Extractor(dataclasses.replace(TINY, gram_pool="lesion+skin"), TORCH)
    assert lesion.fingerprint != plain.fingerprint != both.fingerprint
    assert lesion.style_dim == plain.style_dim and both.style_dim == 2 * plain.style_dim
    a, b = plain.extract(images), lesion.extract(images)
    assert both.extract(images).styles.shape == (3, both.style_dim)
    assert np.array_equal(a.features, b.features) and np.array_equal(a.masks, b.masks)
    assert not np.allclose(a.styles, b.styles)
    assert [e["region"] for e in both.style_layout[:2]] == ["lesion", "skin"]
    assert both.style_layout[-1]["offset"] + both.style_layout[-1]["size"] == both.style_dim
    with pytest.raises(ValueError, match="needs masks"):
        Extractor(dataclasses.replace(TINY, gram_pool="lesion", masks=False), TORCH)


def test_gram_normalisations_by_hand():
    from dermsearch.extract.gram import normalise_grams

    g = torch.tensor([[[4.0, -1.0], [-1.0, 9.0]]], dtype=torch.float64)
    np.testing.assert_allclose(normalise_grams([g], "sqrt")[0][0].numpy(), [[2, -1], [-1, 3]])
    np.testing.assert_allclose(normalise_grams([g], "l2")[0][0].numpy(), g[0].numpy() / np.sqrt(16 + 1 + 1 + 81))
    np.testing.assert_allclose(normalise_grams([g], "sqrt+l2")[0][0].numpy(),
                               np.array([[2, -1], [-1, 3]]) / np.sqrt(15.0))
    v = style_vector(normalise_grams([g, 3 * g], "l2"), [1.0, 1.0]).astype(np.float64)
    assert np.linalg.norm(v[0, :3]) == pytest.approx(1.0) and np.linalg.norm(v[0, 3:]) == pytest.approx(1.0)
    with pytest.raises(KeyError, match="valid: none, l2, sqrt, sqrt\\+l2"):
        normalise_grams([g], "cube")


@pytest.mark.slow
def test_onnx_backend_matches_torch_for_lesion_grams(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("DERMSEARCH_CACHE", str(tmp_path))
    cfg = dataclasses.replace(TINY, gram_pool="lesion+skin", gram_margin=0.1, gram_norm="sqrt+l2")
    images = [lesion_image(i) for i in range(4)]
    t = Extractor(cfg, TORCH).extract(images)
    o = Extractor(cfg, Runtime(backend="onnx")).extract(images)
    assert np.abs(t.styles - o.styles).max() <= 1e-4 * max(1.0, float(np.abs(t.styles).max()))


@pytest.fixture(scope="module")
def lesion_index(tmp_path_factory):
    from dermsearch.index.build import build_index

    root = tmp_path_factory.mktemp("lesion-index")
    folder = root / "images"
    folder.mkdir()
    for i in range(10):
        lesion_image(i).save(folder / f"img{i:02d}.png")
    ex = Extractor(dataclasses.replace(TINY, gram_pool="lesion+skin", gram_margin=0.05), TORCH)
    build_index(folder, root / "ix", extractor=ex)
    return root, ex


def test_search_explains_each_hit(lesion_index):
    from dermsearch.search import Searcher

    root, ex = lesion_index
    s = Searcher(root / "ix", extractor=ex)
    layout = s.index.manifest["style_layers"]
    assert layout == ex.style_layout and len(layout) == 14
    q = s.encode(lesion_image(42))
    plain = s.search(q, k=3)
    assert all(h.explain is None for hits in plain.results.values() for h in hits)
    r = s.search(q, k=3, explain=True)
    for hits in r.results.values():
        for h in hits:
            st, mk = h.explain["style"], h.explain["mask"]
            assert st["ls"] == pytest.approx(h.raw["ls"], rel=1e-4)               # the engine's own LS
            assert sum(e["ls"] for e in st["layers"]) == pytest.approx(st["ls"], rel=1e-9)
            assert sum(e["share"] for e in st["layers"]) == pytest.approx(1.0)
            assert [(e["stage"], e["region"]) for e in st["layers"]][:3] == [(1, "lesion"), (1, "skin"), (2, "lesion")]
            assert mk["dice"] == pytest.approx(h.components["dice"], abs=1e-9)
            assert mk["overlap"] <= min(mk["query_area"], mk["match_area"])
    doc = r.to_json()
    hit = doc["results"]["style"][0]
    assert set(hit["explain"]) == {"style", "mask"}
    assert set(hit["explain"]["style"]["layers"][0]) == {"stage", "region", "channels", "ls", "share"}
    assert set(hit["explain"]["mask"]) == {"size", "query_area", "match_area", "overlap", "dice"}
    png = s.mask_overlay(q, hit["id"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_search_json_and_contact_sheet_carry_explanations(lesion_index, tmp_path, capsys):
    from dermsearch.cli.main import main

    root, _ = lesion_index
    query = tmp_path / "q.png"
    lesion_image(7).save(query)
    sheet = tmp_path / "sheet.html"
    assert main(["search", str(root / "ix"), str(query), "-k", "2", "--json", "--html", str(sheet),
                 "--device", "cpu"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert "explain" in doc["results"]["i1_sc"][1]
    page = sheet.read_text()
    assert page.count("class='bar'") == 20 and "data:image/png;base64," in page and "Dice" in page
    assert main(["search", str(root / "ix"), str(query), "-k", "2", "--json", "--no-explain"]) == 0
    assert "explain" not in capsys.readouterr().out


def test_fit_gram_weights_command_writes_usable_weights(tiny_extractor, tmp_path, capsys):
    import csv

    from dermsearch.cli.main import main
    from dermsearch.index.build import build_index

    folder = tmp_path / "imgs"
    folder.mkdir()
    rows = []
    for i in range(16):
        lesion_image(i).save(folder / f"i{i}.png")
        rows.append({"image_id": f"i{i}", "image_path": f"imgs/i{i}.png", "diagnosis": "ab"[i % 2],
                     "lesion_id": f"L{i // 2}", "split": "val" if i < 6 else "train"})
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["image_id", "image_path", "diagnosis", "lesion_id"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    with open(tmp_path / "split.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["image_id", "split"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    build_index(tmp_path / "labels.csv", tmp_path / "ix", extractor=tiny_extractor)
    out = tmp_path / "w.json"
    assert main(["fit-gram-weights", str(tmp_path / "ix"), "--split", str(tmp_path / "split.csv"),
                 "-k", "2", "--out", str(out)]) == 0
    assert "share of the loss" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert len(doc["betas"]) == 7 and doc["gram_pool"] == "image" and doc["fitted_on"]["n_queries"] == 6
    cfg = dataclasses.replace(TINY, gram_weights=str(out))
    ex = Extractor(cfg, TORCH)
    assert ex.betas == pytest.approx(doc["betas"]) and ex.fingerprint != tiny_extractor.fingerprint
    assert main(["index", str(tmp_path / "labels.csv"), "--index", str(tmp_path / "ix2"), "--weights", "random",
                 "--image-size", "64", "--mask-size", "32", "--gram-weights", str(out), "--backend", "torch"]) == 0
    from dermsearch.index import Index
    assert Index.open(tmp_path / "ix2").manifest["gram_betas"] == pytest.approx(doc["betas"])
    assert doc["network"] == ex.network_fingerprint and doc["style_network"] == ex.style_fingerprint
    doc["style_network"] = "0" * 64               # fitted for other members: refused, with the way out
    out.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="other member networks.*fit-gram-weights"):
        Extractor(cfg, TORCH)
    del doc["style_network"]                      # an older file names the whole network only
    doc["network"] = "0" * 64
    out.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="another feature network.*fit-gram-weights"):
        Extractor(cfg, TORCH)


def test_packaged_learned_weights_belong_to_the_packaged_default():
    from dermsearch.extract import ExtractorConfig
    from dermsearch.extract.extractor import LEARNED_GRAM_WEIGHTS, PAPER_STYLE
    from dermsearch.models import state_fingerprint
    from dermsearch.models.ensemble import default_ensemble_path, load_ensemble

    doc = json.loads(LEARNED_GRAM_WEIGHTS.read_text())
    cfg = ExtractorConfig()
    assert cfg.gram_weights == "learned"
    assert (doc["gram_pool"], doc["gram_margin"], doc["gram_norm"]) == (cfg.gram_pool, cfg.gram_margin, cfg.gram_norm)
    net, _ = load_ensemble(default_ensemble_path())
    assert doc["style_network"] == state_fingerprint(net.members)    # the members that make the Grams
    assert doc["fitted_on"]["queries"] == ["val"] and "test" not in doc["fitted_on"]["candidates"]
    betas = resolve_gram_weights(cfg, tuple(net.members[0].out_channels), state_fingerprint(net),
                                 doc["style_network"])
    assert len(betas) == 7 and max(betas) > 0
    # any other model gets the paper's definition, whose weights need no fit
    assert {k: getattr(ExtractorConfig.for_weights("imagenet"), k) for k in PAPER_STYLE} == PAPER_STYLE
