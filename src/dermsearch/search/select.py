"""Choosing rows by score: the one ordered top-k of every engine and the unordered candidate
choices of the approximate ones. Pure functions of numpy arrays (re-exported by :mod:`.engine`)."""

from __future__ import annotations

import numpy as np

__all__ = ["top_k_rows", "kth_largest", "largest", "smallest"]

SAMPLED_FROM = 100_000      # from this many scores, largest() first keeps those above a sampled cut
SAMPLE_SHARE = 50           # ...when the c wanted are at most 1/50 of them
SAMPLE = 16_384             # scores in the strided sample that places the cut


def top_k_rows(scores: np.ndarray, valid: np.ndarray, k: int) -> list[np.ndarray]:
    """Per query, the valid rows with the k best scores, best first; ties keep row order.
    ``k <= 0`` ranks every valid row. The one ordered top-k of every engine."""
    out = []
    for s, v in zip(np.atleast_2d(scores), np.atleast_2d(valid)):
        rows = np.flatnonzero(v)
        neg = -s[rows]
        if k <= 0 or k >= rows.size:
            order = np.argsort(neg, kind="stable")
        else:
            cand = np.flatnonzero(neg <= -kth_largest(s[rows], k))
            order = cand[np.argsort(neg[cand], kind="stable")][:k]
        out.append(rows[order])
    return out


def kth_largest(values: np.ndarray, k: int) -> float:
    """The k-th largest of ``values`` (1 <= k <= size): the score a row must reach to be in a top k."""
    return -np.partition(-np.asarray(values), k - 1)[k - 1]


def largest(scores: np.ndarray, c: int) -> np.ndarray:
    """Positions of the ``c`` largest ``scores``, in no order (every position when ``c`` >= their
    number): how approximate engines choose candidates, where the order does not matter. Of
    scores tied at the cut the lowest positions are chosen, so that the same choice made over
    parts of the scores (shards: :mod:`dermsearch.search.fast_sharded`) and merged gives the same
    rows; checking costs one comparison pass (see :func:`smallest`). From :data:`SAMPLED_FROM`
    scores, a strided sample first sets a cut below the c-th largest, and only the scores above it
    are partitioned (the same rows: every score tied at the cut is above it; fast mode's
    selections over a million rows, docs/performance.md)."""
    n = scores.size
    if c >= n:
        return np.arange(n)
    if c <= 0:
        return np.zeros(0, dtype=np.int64)
    if n >= SAMPLED_FROM and c * SAMPLE_SHARE <= n:
        pre = _above_sampled_cut(scores, c)
        if pre is not None:
            return pre[_partition_largest(scores[pre], c)]
    return _partition_largest(scores, c)


def _above_sampled_cut(scores: np.ndarray, c: int) -> np.ndarray | None:
    """The positions (ascending) of the scores at or above a cut that a strided sample places
    below the ``c``-th largest (about 4c of them), or None when too few pass (or any is NaN, which
    argpartition ranks above every number): one comparison pass instead of a partition of all."""
    n = scores.size
    step = max(1, n // SAMPLE)
    sample = scores[::step]
    keep = min(sample.size, int(np.ceil(4.0 * c * sample.size / n)) + 8)
    cut = np.partition(sample, sample.size - keep)[sample.size - keep]
    if np.issubdtype(scores.dtype, np.floating) and (np.isnan(cut) or np.isnan(scores).any()):
        return None
    pre = np.flatnonzero(scores >= cut)
    return pre if pre.size >= c else None


def _partition_largest(scores: np.ndarray, c: int) -> np.ndarray:
    n = scores.size
    if c >= n:
        return np.arange(n)
    top = np.argpartition(scores, n - c)[n - c:]
    values = scores[top]
    cut = values.min()
    if np.isnan(values).any() or np.count_nonzero(scores >= cut) == c:   # no tie crosses the cut (NaN: as before)
        return top
    above = top[values > cut]
    return np.concatenate([above, np.flatnonzero(scores == cut)[: c - above.size]])


def smallest(values: np.ndarray, c: int) -> np.ndarray:
    """Positions of the ``c`` smallest ``values``, in no order (every position when ``c`` >= their
    number). ``smallest(-s, c)`` and ``largest(s, c)`` choose the same scores but may choose
    different rows among ties at the cut: each caller keeps the one its results were built on."""
    if c >= values.size:
        return np.arange(values.size)
    return np.argpartition(values, c - 1)[:c]
