"""search/select.py: largest() with its sampled cut chooses exactly the rows the plain partition
chooses (ties at the cut resolved to the lowest positions), on scores with ties, -inf, NaN and
integers; smallest() and top_k_rows against sorting."""

from __future__ import annotations

import numpy as np
import pytest

from dermsearch.search import select
from dermsearch.search.select import _partition_largest, largest, smallest, top_k_rows


def _naive_largest(scores: np.ndarray, c: int) -> set[int]:
    """The c largest, ties at the cut to the lowest positions (NaN above every number)."""
    key = np.where(np.isnan(scores), np.inf, scores) if scores.dtype.kind == "f" else scores
    order = np.lexsort((np.arange(scores.size), -key.astype(np.float64)))
    return set(order[:c].tolist())


@pytest.mark.parametrize("kind", ["continuous", "ties", "minus_inf", "nan", "integers", "constant"])
@pytest.mark.parametrize("c", [1, 5, 128, 1024, 3000])
def test_sampled_cut_chooses_the_rows_of_the_plain_partition(kind, c):
    rng = np.random.default_rng(c)
    n = 150_000
    s = rng.normal(size=n).astype(np.float32)
    if kind == "ties":
        s = np.round(s * 4) / 4                     # a few hundred distinct values: ties cross the cut
    elif kind == "minus_inf":
        s[rng.random(n) < 0.7] = -np.inf            # invalid rows
    elif kind == "nan":
        s[rng.choice(n, 3, replace=False)] = np.nan
    elif kind == "integers":
        s = rng.integers(0, 50, n)
    elif kind == "constant":
        s = np.zeros(n, np.float32)
    got = largest(s, c)
    assert got.size == c == np.unique(got).size
    if kind != "nan":       # among NaNs argpartition picks any: only "as before" holds there
        assert set(got.tolist()) == _naive_largest(s, c)
    assert set(got.tolist()) == set(_partition_largest(s, c).tolist())


def test_the_sampled_path_is_taken_and_falls_back_when_too_few_pass(monkeypatch):
    calls = []
    real = select._above_sampled_cut
    monkeypatch.setattr(select, "_above_sampled_cut", lambda s, c: calls.append(c) or real(s, c))
    s = np.random.default_rng(0).normal(size=200_000)
    largest(s, 100)
    largest(s[:50_000], 100)                        # below SAMPLED_FROM: the plain partition
    largest(s, 10_000)                              # more than 1/50 of the scores: the plain partition
    assert calls == [100]
    # a sample that places its cut too high (its strided scores are the only large ones, fewer than
    # c in all): fewer than c pass the cut, so the plain partition answers
    spiky = np.zeros(200_000)
    spiky[::12][:1009] = 1.0
    assert real(spiky, 3000) is None
    assert set(largest(spiky, 3000).tolist()) == _naive_largest(spiky, 3000)


def test_smallest_and_top_k_rows_against_sorting():
    rng = np.random.default_rng(1)
    v = np.round(rng.normal(size=5000), 1)
    assert set(smallest(v, 40).tolist()) <= set(np.flatnonzero(v <= np.sort(v)[39]).tolist())
    valid = rng.random(5000) < 0.5
    rows = top_k_rows(v, valid, 25)[0]
    cand = np.flatnonzero(valid)
    want = cand[np.argsort(-v[cand], kind="stable")][:25]
    assert rows.tolist() == want.tolist()
