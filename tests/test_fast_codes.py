"""Fast mode's float16 scanned codes (``FastConfig.code_precision``): the product against a float64
reference, a row's value independent of the other rows (shards), the overflow fallbacks, what the
writer stores, and answers against float32 codes."""

from __future__ import annotations

import numpy as np
import pytest

from dermsearch.search import MEASURES
from dermsearch.search.engine import Query
from dermsearch.search.fast import FastConfig, FastIndex, cell_counts
from dermsearch.search.fast_build import half_sketches
from dermsearch.search.fast_rows import resolve_code_precision
from dermsearch.search.kernels import blas_single_threaded, code_products, row_parallel_products

from .test_fast import _exact_top, _synthetic

CONFIG = dict(style_dims=6, feature_dims=6, mask_grid=4, candidates=20, normaliser_candidates=8)


def _codes(n=3000, m=256, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, size=(n, m)).astype(np.float16), rng.uniform(-1, 1, size=m).astype(np.float32)


def test_float16_products_match_a_float64_reference_and_do_not_depend_on_other_rows():
    X, q = _codes()
    got = code_products(q, X)
    assert got.dtype == np.float32 and got.shape == (X.shape[0],)
    ref = X.astype(np.float64) @ q.astype(np.float64)
    # the query and each value rounded to float16 once (accumulated in float32): about 2^-11 relative each
    assert np.all(np.abs(got - ref) <= 2.0 ** -9 * (np.abs(X.astype(np.float64)) @ np.abs(q)) + 1e-6)
    for a, b in ((0, 17), (5, 999), (1234, 2999), (2999, 3000), (0, 3000)):     # a shard gets the whole's values
        assert np.array_equal(code_products(q, X[a:b]), got[a:b]), (a, b)
    assert code_products(q, X[:0]).shape == (0,)


def test_float32_codes_keep_the_float32_product():
    X, q = _codes(n=500)
    X = X.astype(np.float32)
    with blas_single_threaded():
        assert np.array_equal(code_products(q, X), row_parallel_products(q[None], X)[0])


def test_values_beyond_float16_are_computed_again_in_float32_and_scales_are_undone():
    X, q = _codes(n=400, m=64)
    X[7] = X[300] = 60000.0         # 60000 x 64 x ~0.5: far beyond 65504
    q[:] = np.abs(q)
    got = code_products(q, X)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[[7, 300]], X[[7, 300]].astype(np.float64) @ q, rtol=1e-6)
    for a, b in ((5, 301), (7, 8), (0, 400)):           # the fallback rows too: a shard gets the whole's values
        assert np.array_equal(code_products(q, X[a:b]), got[a:b]), (a, b)
    X, q = _codes(n=300, m=64, seed=1)
    ref, size = X.astype(np.float64) @ q.astype(np.float64), np.abs(X.astype(np.float64)) @ np.abs(q)
    for factor in (1e6, 1e-7):                          # the query is scaled into float16's range first
        assert np.all(np.abs(code_products(q * np.float32(factor), X) - ref * factor) <= 2.0 ** -9 * size * factor)
    assert np.all(np.abs(code_products(q, X, 0.25) - ref * 4) <= 2.0 ** -9 * size * 4)    # codes stored x 1/4
    nan = q.copy()
    nan[0] = np.nan
    assert np.isnan(code_products(nan, X)).all()


def test_the_writer_stores_half_codes_by_default_and_float32_when_asked(tmp_path):
    (tmp_path / "h").mkdir()
    (tmp_path / "f").mkdir()
    half = _synthetic(tmp_path / "h", config=FastConfig(**CONFIG, code_precision="fp16"))
    full = _synthetic(tmp_path / "f", config=FastConfig(**CONFIG))      # auto: float32 below 100,000 rows
    assert half.arrays["style_sketch"].dtype == np.float16 and half.arrays["mask_cells"].dtype == np.float16
    assert full.arrays["style_sketch"].dtype == np.float32 and full.arrays["mask_cells"].dtype == np.float32
    assert half.info["mask_cells_unit"] == "fraction" and full.info["mask_cells_unit"] == "count"
    assert half.info["code_precision"] == "fp16" and full.info["code_precision"] == "float32"
    counts = cell_counts(np.asarray(full.exact.masks), full.info["mask_size"], 4)
    px = (full.info["mask_size"] // 4) ** 2
    assert np.array_equal(full.arrays["mask_cells"], counts)
    assert np.array_equal(half.arrays["mask_cells"].astype(np.float32) * px, counts)     # 16 px a cell: exact
    scale = half.info["style_sketch_scale"]
    assert 0.5 < np.abs(half.arrays["style_sketch"]).max() <= 1 and np.log2(scale) == round(np.log2(scale))
    np.testing.assert_allclose(half.arrays["style_sketch"].astype(np.float32) / scale, full.arrays["style_sketch"],
                               rtol=2.0 ** -11, atol=1e-7 / scale)
    assert FastIndex.open(tmp_path / "h" / "fast").arrays["style_sketch"].dtype == np.float16

    e, same, hits = full.exact, 0, {m: 0 for m in MEASURES}
    for i in range(0, 400, 20):
        q = Query(np.array(e.features[i]), np.array(e.styles[i]), np.array(e.masks[i]), int(e.mask_areas[i]))
        valid = np.ones(400, bool)
        valid[i] = False
        a, b = full.search(q, 5, MEASURES, valid), half.search(q, 5, MEASURES, valid)
        ref, _ = _exact_top(full, q, i)
        for m in MEASURES:
            hits[m] += len(set(ref[m]) & set(b.rows[m]))
            if np.array_equal(a.rows[m], b.rows[m]):      # rows scored with exact vectors either way
                same += 1
                np.testing.assert_allclose(b.scores[m], a.scores[m], atol=1e-6)
    assert same >= 0.95 * 20 * len(MEASURES), same
    assert min(hits.values()) >= 0.9 * 20 * 5, hits


@pytest.mark.parametrize("magnitude", [1e5, 1e-7])
def test_sketches_of_any_scale_keep_float16_precision_and_non_finite_ones_stay_float32(tmp_path, magnitude):
    rng = np.random.default_rng(3)
    sketch = (rng.normal(size=(50, 8)) * magnitude).astype(np.float32)
    np.save(tmp_path / "style_sketch.npy", sketch)
    said, info = [], {"rows": 50}
    half_sketches(tmp_path, FastConfig(code_precision="fp16"), info, said.append)
    stored = np.load(tmp_path / "style_sketch.npy")
    assert stored.dtype == np.float16 and info["code_precision"] == "fp16" and not said
    q = rng.normal(size=8).astype(np.float32)
    np.testing.assert_allclose(code_products(q, stored, info["style_sketch_scale"]), sketch.astype(np.float64) @ q,
                               rtol=4e-3, atol=4e-3 * magnitude)
    assert not list(tmp_path.glob("*.fp16.npy"))
    sketch[3, 2] = np.inf
    np.save(tmp_path / "style_sketch.npy", sketch)
    info = {"rows": 50}
    half_sketches(tmp_path, FastConfig(code_precision="fp16"), info, said.append)
    assert np.load(tmp_path / "style_sketch.npy").dtype == np.float32 and "not finite" in said[0]
    assert info["code_precision"] == "mixed" and "style_sketch_scale" not in info


@pytest.mark.parametrize("precision", ["auto", "fp16", "float32"])
def test_code_precision_is_a_checked_choice_and_auto_goes_by_size(precision):
    assert FastConfig(code_precision=precision).code_precision == precision
    with pytest.raises(Exception, match="code_precision"):
        FastConfig(code_precision="int4")
    want = {"auto": ("float32", "fp16"), "fp16": ("fp16", "fp16"), "float32": ("float32", "float32")}[precision]
    assert (resolve_code_precision(precision, 99_999), resolve_code_precision(precision, 100_000)) == want
