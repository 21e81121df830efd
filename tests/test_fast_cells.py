"""Fast mode's coarse partition (search/fast_cells.py): the cells' distance bounds hold for every
member, a view of some rows answers as the whole index restricted to them, recall and stated
normaliser bounds with cells, prefixes and shards, and nothing written below ``cells_from``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dermsearch.search import MEASURES
from dermsearch.search.engine import Query
from dermsearch.search.fast import FastConfig, FastIndex
from dermsearch.search.fast_build import FastIndexWriter
from dermsearch.search.fast_cells import cell_count

from .test_fast import _exact_top

CFG = dict(style_dims=6, feature_dims=6, mask_grid=4, candidates=20, normaliser_candidates=8)


def _clustered(tmp_path, n=1200, d=24, s=60, side=16, **cfg):
    """Rows in 40 groups (lesion-like discs as masks), written with cells of ~30 rows."""
    rng = np.random.default_rng(3)
    groups = rng.integers(0, 40, n)
    cf, cs = rng.normal(size=(40, d)) * 3, rng.normal(size=(40, s)) * 3
    F = (cf[groups] + 0.6 * rng.normal(size=(n, d)) + 3).astype(np.float32)
    S = (cs[groups] + 0.6 * rng.normal(size=(n, s)) + 2).astype(np.float32)
    yy, xx = np.mgrid[:side, :side]
    cy, cx, r = rng.uniform(4, 12, n), rng.uniform(4, 12, n), rng.uniform(2, 7, n)
    masks = (((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) <= r[:, None, None] ** 2
             ).reshape(n, -1)
    packed = np.packbits(masks, axis=1)
    config = FastConfig(**{**CFG, "cells_from": 100, "cell_rows": 30, "probe": 0.1, **cfg})
    w = FastIndexWriter(tmp_path / "fast", n, d, s, packed.shape[1], side, config)
    w.write(0, [f"r{i}" for i in range(n)], F, S, packed, masks.sum(1).astype(np.int32))
    return w.finish()


def _query(fast, i):
    e = fast.exact
    return Query(np.array(e.features[i]), np.array(e.styles[i]), np.array(e.masks[i]), int(e.mask_areas[i]))


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    return _clustered(tmp_path_factory.mktemp("cells"))


def test_cells_are_written_and_counted_by_size(clustered, tmp_path):
    info = json.loads((clustered.directory / "fast.json").read_text())
    assert info["cells"]["count"] == 40 == len(clustered.cells)
    assert sorted(clustered.cells.rows.tolist()) == list(range(len(clustered)))
    assert cell_count(99_999, FastConfig()) == 0 and cell_count(1_000_000, FastConfig()) == 1000
    assert cell_count(10**6, FastConfig(cells_from=0)) == 0
    small = _clustered(tmp_path, n=90)          # below cells_from: no partition, no files
    assert small.cells is None and not list(small.directory.glob("cell_*.npy"))


def test_every_member_lies_within_its_cells_bound(clustered):
    cells, e = clustered.cells, clustered.exact
    for i in (0, 7, 500, 1111):
        q = _query(clustered, i)
        raw = e.raw(Query.batch([q]), ["euclidean", "style"])
        for kind, comp, vec in (("feature", "euclidean", q.feature), ("style", "style", q.style)):
            _, p, _, rq = clustered.query_codes(kind, vec)
            upper = cells.upper(kind, cells.distances(kind, p), rq)
            d2 = raw[comp][0] ** 2 if comp == "euclidean" else raw[comp][0]
            for c in range(len(cells)):
                members = cells.rows[cells.starts[c]:cells.starts[c + 1]]
                assert (d2[members] <= upper[c] * (1 + 1e-6)).all(), (kind, c)


def test_a_view_answers_as_the_whole_index_restricted_to_its_rows(clustered):
    rows = np.sort(np.random.default_rng(0).choice(len(clustered), 300, replace=False))
    view = clustered.view(rows)
    for i in (int(rows[3]), int(rows[200])):
        q = _query(clustered, i)
        valid = np.zeros(len(clustered), bool)
        valid[rows] = True
        valid[i] = False
        whole = clustered.search_rows(q, 5, MEASURES, valid)
        part = view.search_rows(q, 5, MEASURES, valid[rows])
        for m in MEASURES:
            assert rows[part.rows[m]].tolist() == whole.rows[m].tolist(), m
            np.testing.assert_allclose(part.scores[m], whole.scores[m], rtol=1e-6)
        assert part.normalisers == pytest.approx(whole.normalisers)


def test_recall_and_stated_bounds_with_cells(clustered):
    e, n = clustered.exact, len(clustered)
    hits = {m: 0 for m in MEASURES}
    scanned = []
    for i in range(0, n, 60):
        q = _query(clustered, i)
        valid = np.ones(n, bool)
        valid[i] = False
        r = clustered.search(q, 5, MEASURES, valid)
        assert r.cells is not None
        scanned.append(r.cells[2])
        ref, _ = _exact_top(clustered, q, i)
        raw = e.raw(Query.batch([q]), ["euclidean", "style"])
        for comp in ("euclidean", "style"):
            true_max = float(raw[comp][0][valid].max())
            lo, hi = r.normaliser_bounds[comp]
            assert lo <= true_max * (1 + 1e-6) and true_max <= hi * (1 + 1e-6)
            if r.certified[comp]:
                assert lo == pytest.approx(true_max, rel=1e-6)
        for m in MEASURES:
            hits[m] += len(set(ref[m]) & set(r.rows[m]))
    queries = len(range(0, n, 60))
    for m in MEASURES:
        assert hits[m] / (5 * queries) >= 0.9, (m, hits[m])
    assert max(scanned) < n // 2        # the queries scanned part of the archive, not all of it
    ranking = clustered.rank(clustered.take([0]), np.ones((1, n), bool), ["cosine"], 5)[0]
    assert any("cells" in note for note in ranking.notes)


def test_prefixes_and_shards_keep_their_own_cells(clustered):
    pre = clustered.prefix(700)
    assert sorted(pre.cells.rows.tolist()) == list(range(700))
    shard = FastIndex.open(clustered.directory, rows=(400, 1000))
    assert sorted(shard.cells.rows.tolist()) == list(range(600))
    member = shard.cells.rows[shard.cells.starts[5]:shard.cells.starts[6]] + 400
    whole = clustered.cells.rows[clustered.cells.starts[5]:clustered.cells.starts[6]]
    assert member.tolist() == [r for r in whole.tolist() if 400 <= r < 1000]
    q = _query(clustered, 450)
    valid = np.ones(len(shard), bool)
    valid[50] = False
    r = shard.search(q, 5, MEASURES, valid)
    assert all(((v >= 0) & (v < 600)).all() for v in r.rows.values())
