"""The code-space synthetic archive of benchmarks/bench_scaling.py (benchmarks/synthetic_archive.py)
against the same rows materialised: the files equal those FastIndexWriter writes, the virtual
style rows equal the materialised rows, fast-mode search returns the same rows, and the exact
references by linearity equal the exact engine's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from dermsearch.search.engine import ExactEngine, Query, rank_rows
from dermsearch.search.fast import FastConfig, FastIndex
from dermsearch.search.fast_build import FastIndexWriter
from dermsearch.search.measures import MEASURES

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import synthetic_archive as sa  # noqa: E402

N_REAL, N, D, S, SIDE = 40, 340, 24, 60, 16
CONFIG = FastConfig(style_dims=6, feature_dims=6, sketch_dims=16, mask_grid=4, candidates=20, wide_candidates=40,
                    normaliser_candidates=8, fit_rows=200, precision="float32")


def _real_rows(directory: Path) -> sa.RealRows:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(N_REAL, 5))
    F = (z @ rng.normal(size=(5, D)) + 0.05 * rng.normal(size=(N_REAL, D)) + 3).astype(np.float32)
    St = (z @ rng.normal(size=(5, S)) + 0.3 * rng.normal(size=(N_REAL, S)) + 2).astype(np.float32)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    cy, cx, r = rng.uniform(4, 12, N_REAL), rng.uniform(4, 12, N_REAL), rng.uniform(2, 7, N_REAL)
    masks = (((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) <= r[:, None, None] ** 2
             ).reshape(N_REAL, -1)
    directory.mkdir()
    for name, a in (("features", F), ("styles", St), ("masks", np.packbits(masks, axis=1)),
                    ("mask_areas", masks.sum(1).astype(np.int32)), ("ids", np.array([f"r{i}" for i in range(N_REAL)]))):
        np.save(directory / f"{name}.npy", a)
    return sa.RealRows(directory, SIDE)


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    real = _real_rows(root / "real")
    beta, _ = sa.choose_beta(real.styles, sample=N_REAL)
    plan = sa.make_plan(N_REAL, N, beta, seed=3)
    sa.build_archive(root / "codes", real, plan, CONFIG)
    codes, virtual, _ = sa.open_archive(root / "codes")
    F, St, M, A = sa.materialise(real, plan, np.arange(N))
    w = FastIndexWriter(root / "materialised", N, D, S, M.shape[1], SIDE, CONFIG)
    for s in range(0, N, 128):
        w.write(s, sa.row_ids(np.arange(s, min(N, s + 128)), N_REAL), F[s:s + 128], St[s:s + 128], M[s:s + 128],
                A[s:s + 128])
    return real, plan, codes, virtual, w.finish(), St


def test_plan_is_deterministic_prefix_stable_and_synthetic_rows_differ(archives):
    _, plan, *_ = archives
    again = sa.make_plan(N_REAL, N, plan.beta, seed=3)
    longer = sa.make_plan(N_REAL, 2 * N, plan.beta, seed=3)
    for name in ("src", "a", "b", "shift", "mirror"):
        assert np.array_equal(getattr(again, name), getattr(plan, name))
        assert np.array_equal(getattr(longer, name)[:N], getattr(plan, name))
    assert np.array_equal(plan.src[:N_REAL], np.arange(N_REAL)) and 0 < plan.beta < 1
    assert (plan.a[N_REAL:] != plan.b[N_REAL:]).mean() > 0.9


def test_synthetic_masks_are_the_sources_rolled_then_mirrored(archives):
    real, plan, *_ = archives
    rows = np.arange(N)
    packed, areas = sa.shifted_masks(real, plan, rows)
    bits = np.unpackbits(packed, axis=1).reshape(N, SIDE, SIDE)
    for i in rows:
        m = np.unpackbits(real.masks[plan.src[i]]).reshape(SIDE, SIDE)
        m = np.roll(m, tuple(int(v) for v in plan.shift[i]), axis=(0, 1))
        assert np.array_equal(bits[i], m[:, ::-1] if plan.mirror[i] else m), i
        assert areas[i] == m.sum()
    assert plan.mirror[N_REAL:].any() and (plan.shift[N_REAL:] != 0).any()


def test_code_space_files_equal_the_writers_on_the_materialised_rows(archives):
    *_, codes, _, ref, _ = archives
    names = set(ref.arrays) - {"styles"}
    assert names == set(codes.arrays), "the same files, less the style rows"
    assert not (codes.directory / "styles.npy").exists()
    for name in sorted(names):
        got, want = np.asarray(codes.arrays[name]), np.asarray(ref.arrays[name])
        assert got.dtype == want.dtype and got.shape == want.shape, name
        if got.dtype.kind == "f":
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()), err_msg=name)
        else:
            assert np.array_equal(got, want), name
    ci, ri = (json.loads((f.directory / "fast.json").read_text()) for f in (codes, ref))
    for key in ("build_seconds", "full_rows", "synthetic"):
        ci.pop(key, None), ri.pop(key, None)
    assert ci == ri


def test_virtual_rows_are_the_materialised_rows(archives):
    *_, virtual, ref, St = archives
    rows = np.array([339, 0, 41, 41, 200, 39, 40])
    assert np.array_equal(virtual(rows), St[rows])
    assert np.array_equal(virtual.all(), np.load(ref.directory / "styles.npy"))
    assert virtual.served >= rows.size + N
    real, plan = archives[:2]
    assert np.array_equal(sa.combine(lambda r: real.styles[r], plan, np.arange(N), chunk=64), St)


def _query(fast: FastIndex, i: int) -> Query:
    e = fast.exact
    return Query(np.array(e.features[i]), np.array(e.styles[i]), np.array(e.masks[i]), int(e.mask_areas[i]), str(i))


def test_fast_search_returns_the_same_rows_on_both(archives):
    *_, codes, _, ref, _ = archives
    for i in (*range(0, N_REAL, 4), 50, 333):
        valid = np.ones(N, bool)
        valid[i] = False
        q = _query(ref, i)
        got, want = codes.search(q, 5, MEASURES, valid), ref.search(q, 5, MEASURES, valid)
        for m in MEASURES:
            assert np.array_equal(got.rows[m], want.rows[m]), (i, m)
            np.testing.assert_allclose(got.scores[m], want.scores[m], rtol=1e-6)
        assert got.certified == want.certified


def test_linear_exact_references_equal_the_exact_engine(archives):
    real, plan, codes, virtual, ref, _ = archives
    qrows = np.array([0, 7, 19, 33, 120])
    queries = [_query(ref, int(i)) for i in qrows]
    got = sa.exact_raw(sa.archive_arrays(codes.directory), real, virtual, queries, block=100)
    want = ExactEngine(*(np.asarray(getattr(ref.exact, n)) for n in ("features", "styles", "masks", "mask_areas"))
                       ).raw(Query.batch(queries))
    assert set(got) == set(want)
    for c in want:
        np.testing.assert_allclose(got[c], want[c], rtol=1e-5, atol=1e-6 * float(np.abs(want[c]).max()), err_msg=c)
    valid = np.ones((len(qrows), N), bool)
    valid[np.arange(len(qrows)), qrows] = False
    for g, w in zip(rank_rows(got, valid, MEASURES, 5), rank_rows(want, valid, MEASURES, 5)):
        for m in MEASURES:
            assert np.array_equal(g.measures[m].rows, w.measures[m].rows), m


def test_coded_rows_decode_as_the_products_int6_rows(archives, tmp_path):
    """bench_scaling --rerank int6 synthesises each re-rank row, then encodes and decodes it: the
    values fast mode would read from `optimize --precision int6` files of the same rows."""
    from dermsearch.search.fast_rows import open_compact_rows, write_compact_rows

    *_, virtual, _, St = archives
    groups = ((0, 25), (25, S))
    write_compact_rows(tmp_path, St, "int6", groups)
    want = open_compact_rows(tmp_path, "int6", S)
    coded = sa.CodedRows(virtual, groups)
    rows = np.array([339, 0, 41, 200, 39])
    before = virtual.seconds
    np.testing.assert_allclose(coded(rows), want(rows), rtol=1e-6, atol=1e-6)
    assert coded.coded == rows.size and coded.bytes > 0 and coded.seconds > before
    assert not np.array_equal(coded(rows), St[rows])              # lossy: not the float32 rows
    np.testing.assert_allclose(coded.style_losses(St[7], rows), want.style_losses(St[7], rows), rtol=1e-5)
