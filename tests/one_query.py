"""One-query forms of the batch measure functions (``dermsearch.search.measures``), for the tests:
the engines compute a batch of queries at once; these call the same functions for one query."""

from __future__ import annotations

import numpy as np

from dermsearch.search.engine import top_k_rows
from dermsearch.search.measures import (
    dice_from_intersections,
    distances_from_dots,
    mask_intersections,
    row_sqnorms,
)


def squared_distances(q: np.ndarray, X: np.ndarray, x_sqnorms: np.ndarray | None = None) -> np.ndarray:
    """||x − q||² for every row x of X, as float64 (one float32 product, near-duplicates recomputed)."""
    q32 = np.asarray(q, dtype=np.float32)[None, :]
    if x_sqnorms is None:
        x_sqnorms = row_sqnorms(X)
    return distances_from_dots((X @ q32[0])[None, :], q32, X, row_sqnorms(q32), x_sqnorms)[0]


def euclidean_distances(q: np.ndarray, X: np.ndarray, x_sqnorms: np.ndarray | None = None) -> np.ndarray:
    """ED(q, y) for every row y of X (eq. 1)."""
    return np.sqrt(squared_distances(q, X, x_sqnorms))


def cosine_similarities(q: np.ndarray, X: np.ndarray, x_sqnorms: np.ndarray | None = None) -> np.ndarray:
    """CS(q, y) (eq. 3). A zero vector has cosine 0 with everything (no direction)."""
    q32 = np.asarray(q, dtype=np.float32)
    if x_sqnorms is None:
        x_sqnorms = row_sqnorms(X)
    dots = (X @ q32).astype(np.float64)
    norms = np.sqrt(x_sqnorms) * np.linalg.norm(q32.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        cs = np.where(norms > 0, dots / norms, 0.0)
    return np.clip(cs, -1.0, 1.0)


def style_losses(q: np.ndarray, S: np.ndarray, s_sqnorms: np.ndarray | None = None) -> np.ndarray:
    """LS(q, y) of eq. 6, given style vectors packed as in ``extract.gram``."""
    return squared_distances(q, S, s_sqnorms)


def dice_coefficients(q_packed: np.ndarray, q_area: int, M_packed: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """DC (eq. 8) of one bit-packed mask against every row; both empty -> 1, one empty -> 0."""
    inter = mask_intersections(np.asarray(q_packed, dtype=np.uint8)[None, :], M_packed)
    return dice_from_intersections(inter, np.array([q_area]), areas)[0]


def max_normalised(distances: np.ndarray) -> np.ndarray:
    """1 − d / max d over the candidates (eqs. 2 and 7); all distances 0 -> score 1."""
    d = np.asarray(distances, dtype=np.float64)
    if d.size == 0:
        return d.copy()
    top = d.max()
    if top <= 0:
        return np.ones_like(d)
    return 1.0 - d / top


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores, best first; ties keep index order (deterministic).
    ``k <= 0`` ranks everything."""
    return top_k_rows(scores[None, :], np.ones((1, scores.shape[0]), dtype=bool), k)[0]
