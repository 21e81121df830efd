"""Fast mode: exact re-rank equals exact search when the candidates cover the archive; recall and
certified normalisers on synthetic data; the stated bound when a normaliser is not certified;
staleness, CLI. Also the batched exact engine against one-by-one search."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dermsearch.cli.main import main
from dermsearch.index.build import build_index
from dermsearch.search import MEASURES, Searcher
from dermsearch.search.engine import Query, maxima, normalise, rank_rows
from dermsearch.search.fast import FastConfig, FastModeMissing, RowReader, fast_dir, score_error_bound
from dermsearch.search.fast_build import FastIndexWriter, optimize
from dermsearch.search.measures import mask_intersections, measure_scores

from .conftest import lesion_image


@pytest.fixture(scope="module")
def indexed(tiny_extractor, tmp_path_factory):
    root = tmp_path_factory.mktemp("fast")
    (root / "images").mkdir()
    for i in range(14):
        lesion_image(i).save(root / "images" / f"x{i:02d}.png")
    extractor = tiny_extractor
    build_index(root / "images", root / "ix", extractor=extractor)
    return root, extractor


def test_fast_equals_exact_when_candidates_cover_the_archive(indexed):
    root, extractor = indexed
    exact = Searcher(root / "ix", extractor=extractor)
    from dermsearch.index import Index
    optimize(Index.open(root / "ix"), FastConfig(style_dims=4, feature_dims=4, mask_grid=4, candidates=16,
                                                 normaliser_candidates=2))
    fast = Searcher(root / "ix", extractor=extractor, mode="fast")
    for image_id in ("x00", "x07", "x13"):
        q = exact.query_for_id(image_id)
        a = exact.search(q, k=5, exclude_ids=[image_id])
        b = fast.search(q, k=5, exclude_ids=[image_id])
        assert any("certified exact" in m for m in b.messages)
        for m in MEASURES:
            assert [h.id for h in b.results[m]] == [h.id for h in a.results[m]], m
            for x, y in zip(a.results[m], b.results[m]):
                assert y.score == pytest.approx(x.score, abs=1e-5)
                for c in x.components:
                    assert y.components[c] == pytest.approx(x.components[c], abs=1e-5)
    with pytest.raises(ValueError, match="use exact mode to rank every row"):
        fast.search(exact.query_for_id("x01"), k=0)


def test_exact_searcher_uses_memory_mapped_rows_and_stale_files_are_refused(indexed, tmp_path):
    root, extractor = indexed
    exact = Searcher(root / "ix", extractor=extractor)
    assert exact.fast is not None and isinstance(exact.snapshot.styles, np.memmap)
    # a new version makes the fast files stale: fast mode refuses, exact mode reads LanceDB again
    build_index(root / "images", root / "ix", extractor=extractor)   # nothing new: same version
    lesion_image(50).save(root / "images" / "new.png")
    build_index(root / "images", root / "ix", extractor=extractor)
    with pytest.raises(FastModeMissing, match="dermsearch optimize"):
        Searcher(root / "ix", extractor=extractor, mode="fast")
    again = Searcher(root / "ix", extractor=extractor)
    assert again.fast is None and len(again.snapshot) == 15
    assert again.search(again.query_for_id("new"), k=1).results["style"][0].id == "new"
    (root / "images" / "new.png").unlink()


def _synthetic(tmp_path, n=400, d=24, s=60, side=16, config=FastConfig(style_dims=6, feature_dims=6, mask_grid=4,
                                                                        candidates=20, normaliser_candidates=8)):
    rng = np.random.default_rng(0)
    basis_f, basis_s = rng.normal(size=(5, d)), rng.normal(size=(5, s))
    z = rng.normal(size=(n, 5))
    F = (z @ basis_f + 0.05 * rng.normal(size=(n, d)) + 3).astype(np.float32)
    S = (z @ basis_s + 0.05 * rng.normal(size=(n, s)) + 2).astype(np.float32)
    yy, xx = np.mgrid[:side, :side]
    cy, cx, r = rng.uniform(4, 12, n), rng.uniform(4, 12, n), rng.uniform(2, 7, n)    # lesion-like discs
    masks = (((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) <= r[:, None, None] ** 2
             ).reshape(n, -1)
    packed = np.packbits(masks, axis=1)
    areas = masks.sum(1).astype(np.int32)
    w = FastIndexWriter(tmp_path / "fast", n, d, s, packed.shape[1], side, config)
    w.write(0, [f"r{i}" for i in range(n)], F, S, packed, areas)
    return w.finish()


def _exact_top(fast, q, i, k=5):
    valid = np.ones((1, len(fast)), bool)
    valid[0, i] = False
    raw = fast.exact.raw(Query.batch([q]))
    ranking = rank_rows(raw, valid, MEASURES, k)[0]
    scores = measure_scores(normalise(raw, maxima(raw, valid)), MEASURES)
    return {m: ranking.measures[m].rows for m in MEASURES}, scores


def test_recall_and_exact_scores_on_synthetic_rows(tmp_path):
    fast = _synthetic(tmp_path)
    e = fast.exact
    hits = {m: 0 for m in MEASURES}
    for i in range(0, 400, 20):
        q = Query(np.array(e.features[i]), np.array(e.styles[i]), np.array(e.masks[i]), int(e.mask_areas[i]))
        valid = np.ones(400, bool)
        valid[i] = False
        r = fast.search(q, 5, MEASURES, valid)
        ref, scores = _exact_top(fast, q, i)
        for m in MEASURES:
            hits[m] += len(set(ref[m]) & set(r.rows[m]))
            if all(r.certified.values()):     # certified normalisers: returned scores are the exact ones
                np.testing.assert_allclose(r.scores[m], scores[m][0, r.rows[m]], atol=1e-6)
    for m in MEASURES:
        assert hits[m] / (20 * 5) >= 0.9, (m, hits[m])


def test_uncertified_normaliser_stays_within_the_stated_bound(tmp_path):
    # one PCA dimension and one normaliser check on unstructured data: the max is often not certified
    rng = np.random.default_rng(1)
    n, d = 300, 40
    F = rng.normal(size=(n, d)).astype(np.float32)
    S = rng.normal(size=(n, d)).astype(np.float32)
    cfg = FastConfig(style_dims=1, feature_dims=1, mask_grid=1, candidates=5, normaliser_candidates=1,
                     wide_candidates=5, wide_rows=10)       # few rows re-ranked: neither max is found by chance
    w = FastIndexWriter(tmp_path / "f", n, d, d, 0, 0, cfg)
    w.write(0, [str(i) for i in range(n)], F, S)
    fast = w.finish()
    uncertified = {"euclidean": 0, "style": 0}
    for i in range(0, n, 10):
        q = Query(F[i], S[i])
        valid = np.ones(n, bool)
        valid[i] = False
        r = fast.search(q, 5, ("euclidean", "style"), valid)
        raw = fast.exact.raw(Query.batch([q]), ["euclidean", "style"])
        for comp in ("euclidean", "style"):
            true_max = float(raw[comp][0][valid].max())
            lo, hi = r.normaliser_bounds[comp]
            tol = 1e-6      # float32 products over different row subsets round differently
            assert lo <= true_max * (1 + tol) and true_max <= hi * (1 + tol)
            if r.certified[comp]:
                assert lo == pytest.approx(true_max, rel=tol)
            else:
                uncertified[comp] += 1
            rows = r.rows[comp]
            exact_scores = 1 - raw[comp][0][rows] / true_max
            for v, got, want in zip(raw[comp][0][rows], r.scores[comp], exact_scores):
                assert abs(got - want) <= score_error_bound(v, lo, hi) + 1e-6
    assert min(uncertified.values()) > 0    # the bound is exercised for both normalisers, not only certified cases


def test_row_reader_reads_the_right_rows(tmp_path):
    X = np.random.default_rng(2).normal(size=(50, 33)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    reader = RowReader(tmp_path / "x.npy", threads=3)
    rows = np.array([0, 7, 8, 49, 3])
    np.testing.assert_array_equal(reader(rows), X[rows])
    reader.close()


def test_batch_search_equals_one_by_one(indexed):
    root, extractor = indexed
    s = Searcher(root / "ix", extractor=extractor)
    ids = ["x01", "x04", "x09"]
    qs = [s.query_for_id(i) for i in ids]
    batch = s.search_batch(qs, k=0, exclude_ids=[[i] for i in ids])
    for q, i, b in zip(qs, ids, batch):
        one = s.search(q, k=0, exclude_ids=[i])
        for m in MEASURES:
            assert [h.id for h in one.results[m]] == [h.id for h in b.results[m]]
            np.testing.assert_allclose([h.score for h in one.results[m]], [h.score for h in b.results[m]],
                                       atol=1e-4)  # GEMM vs GEMV rounding, amplified where rows nearly coincide
    # the batched Dice overlaps (unpacked matrix product) equal the popcount path
    M = s.snapshot.masks
    np.testing.assert_array_equal(mask_intersections(M[:3], M), np.vstack([mask_intersections(M[j:j + 1], M)
                                                                            for j in range(3)]))


def test_cli_optimize_and_search_fast(indexed, capsys):
    root, _ = indexed
    assert main(["optimize", str(root / "ix"), "--style-dims", "4", "--feature-dims", "4", "--mask-grid", "4",
                 "--candidates", "16"]) == 0
    assert "fast mode ready" in capsys.readouterr().err
    query = root / "images" / "x03.png"
    assert main(["search", str(root / "ix"), str(query), "--mode", "fast", "--json", "-k", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["results"]["style"][0]["id"] == "x03"
    assert any(m.startswith("fast mode") for m in out["messages"])
    assert out["query"] == str(query) and out["k"] == 2
    assert all(len(hits) == 2 for hits in out["results"].values()) and set(out["results"]) == set(MEASURES)
    assert fast_dir(root / "ix", 0).parent.is_dir()


def test_rows_in_fast_files_serve_labels_only_for_their_own_index(indexed, tmp_path):
    """An optimized index is opened from its fast-mode files (labels included, no LanceDB read);
    files left from another index in the same directory, or damaged ones, are not trusted."""
    import json
    import shutil

    from dermsearch.index import Index

    root, extractor = indexed
    ix = tmp_path / "ix"
    shutil.copytree(root / "ix", ix)
    optimize(Index.open(ix), FastConfig(style_dims=4, feature_dims=4, mask_grid=4, candidates=16))
    reference = Searcher(root / "ix", extractor=extractor).snapshot
    fast_files = next((ix / "fast").iterdir())
    s = Searcher(ix, extractor=extractor)
    assert s.fast is not None and s.fast.rows(s.index.manifest) is not None
    assert list(s.snapshot.ids) == list(reference.ids) and list(s.snapshot.paths) == list(reference.paths)
    rows = json.loads((fast_files / "rows.json").read_text())
    (fast_files / "rows.json").write_text(json.dumps({**rows, "identity": {**rows["identity"], "created": "x"}}))
    assert s.fast.rows(s.index.manifest) is None                  # another index's labels: not used
    assert list(Searcher(ix, extractor=extractor).snapshot.paths) == list(reference.paths)
    (fast_files / "rows.json").write_text('{"truncated')
    assert s.fast.rows(s.index.manifest) is None
    assert list(Searcher(ix, extractor=extractor).snapshot.ids) == list(reference.ids)


def test_count_sketch_against_a_naive_reference_and_the_stored_residual_sketches(tmp_path):
    from dermsearch.search.fast import count_sketch
    from dermsearch.search.fast_build import sketch_hash

    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 37)).astype(np.float32)
    order, signs = sketch_hash(37, 8, seed=1)
    assert sorted(order.tolist()) == list(range(37)) and set(np.unique(signs).tolist()) == {-1.0, 1.0}
    naive = np.zeros((5, 8))
    for pos, coord in enumerate(order):            # position pos of the order falls in bucket b
        b = max(bb for bb in range(8) if bb * 37 // 8 <= pos)
        naive[:, b] += signs[pos] * x[:, coord]
    np.testing.assert_allclose(count_sketch(x, order, signs, 8, block=2), naive, rtol=1e-5, atol=1e-5)
    # unbiased: averaged over many hashes, the sketches' product is the vectors' product
    sketches = [count_sketch(x[:2], *sketch_hash(37, 8, seed=s), 8).astype(np.float64) for s in range(2000)]
    est = np.mean([k @ k.T for k in sketches], axis=0)       # one hash's error: ~|x||y|/sqrt(8) ~ 15
    np.testing.assert_allclose(est, x[:2].astype(np.float64) @ x[:2].T.astype(np.float64), atol=1.5)

    fast = _synthetic(tmp_path, config=FastConfig(style_dims=6, feature_dims=6, mask_grid=4, candidates=20,
                                                  sketch_dims=16))
    a = fast.arrays
    assert a["style_sketch"].shape == (len(fast), 16)
    S = np.asarray(a["styles"][:10], np.float64) - a["style_mean"]
    B = a["style_basis"].astype(np.float64)
    resid = S - (S @ B.T) @ B                                  # the PCA residuals, directly
    np.testing.assert_allclose(a["style_sketch"][:10], count_sketch(resid, a["style_sketch_order"],
                                                                    a["style_sketch_signs"], 16), atol=1e-3)


def test_more_normaliser_rounds_certify_more_and_prefixes_and_large_k_match_exact(tmp_path, monkeypatch):
    import dermsearch.search.fast as fast_module

    fast = _synthetic(tmp_path, config=FastConfig(style_dims=2, feature_dims=2, mask_grid=4, candidates=20,
                                                  normaliser_candidates=1, wide_candidates=5, wide_rows=10))
    F, S = np.asarray(fast.arrays["features"]), np.asarray(fast.arrays["styles"])
    n = len(fast)

    def certified_count() -> int:
        count = 0
        for i in range(0, n, 10):
            valid = np.ones(n, bool)
            valid[i] = False
            count += sum(fast.search(Query(F[i], S[i]), 5, ("euclidean", "style"), valid).certified.values())
        return count

    monkeypatch.setattr(fast_module, "NORMALISER_ROUNDS", 0)
    without = certified_count()
    monkeypatch.setattr(fast_module, "NORMALISER_ROUNDS", 3)
    assert certified_count() > without              # 26 -> 64 of 80 when this test was written

    # a prefix is a smaller archive; k larger than the candidate settings is honoured
    small = fast.prefix(150)
    assert len(small) == 150 and small.info["rows"] == 150
    with pytest.raises(Exception, match=f"files hold {n}"):
        fast.prefix(n + 1)
    q = Query(F[3], S[3])
    valid = np.ones(150, bool)
    valid[3] = False
    raw = small.exact.raw(Query.batch([q]), ["euclidean", "style"])
    ranked = rank_rows({c: v for c, v in raw.items()}, valid[None], ("euclidean", "style"), 40)[0]
    got = small.search(q, 40, ("euclidean", "style"), valid)
    for m in ("euclidean", "style"):
        assert len(got.rows[m]) == 40
        assert got.rows[m][:5].tolist() == ranked.measures[m].rows[:5].tolist()


def test_files_that_keep_mismatching_are_read_once_and_mode_is_per_request(indexed, tmp_path):
    """Fast-mode files for the current version whose ids do not match it (and no labels in them):
    exact mode reads LanceDB instead, once (no retry loop); fast mode refuses. With matching files
    an exact searcher serves fast mode per request, its own mode unchanged."""
    import shutil

    from dermsearch.index import Index

    root, extractor = indexed
    ix = tmp_path / "ix"
    shutil.copytree(root / "ix", ix)
    optimize(Index.open(ix), FastConfig(style_dims=4, feature_dims=4, mask_grid=4, candidates=16))
    s = Searcher(ix, extractor=extractor)
    q = s.query_for_id("x03")
    exact, fast = s.search(q, k=3), s.search(q, k=3, mode="fast")
    assert s.mode == "exact" and s.fast is not None
    assert any(m.startswith("fast mode") for m in fast.messages) and not exact.messages
    assert [h.id for h in fast.results["style"]] == [h.id for h in exact.results["style"]]
    assert s.search_batch([q], k=3, mode="exact")[0].to_json() == exact.to_json()
    with pytest.raises(ValueError, match="mode must be one of"):
        s.search(q, k=3, mode="quick")
    files = fast_dir(ix, s.snapshot.version)
    ids = np.load(files / "ids.npy")
    np.save(files / "ids.npy", ids[::-1])
    (files / "rows.json").unlink()
    again = Searcher(ix, extractor=extractor)
    assert again.fast is None and list(again.snapshot.ids) == list(s.snapshot.ids)
    assert again.search(q, k=3).to_json() == exact.to_json()
    with pytest.raises(FastModeMissing, match="do not match"):
        Searcher(ix, extractor=extractor, mode="fast")
    with pytest.raises(FastModeMissing, match="optimize"):
        again.search(q, k=3, mode="fast")
