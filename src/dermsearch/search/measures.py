"""The ten similarity measures of SPEC section 2, as pure numpy functions.

Raw quantities (distances, similarities, overlaps) are computed for one query against every
candidate at once; the normalised components (ES, CSnew, SS, DC) and the harmonic-mean I1
scores are element-wise. Higher is more similar for every measure.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "MEASURES", "COMPONENTS", "MEASURE_COMPONENTS",
    "euclidean_distances", "cosine_similarities", "style_losses", "dice_coefficients",
    "max_normalised", "cosine_new", "harmonic_mean", "measure_scores",
]

COMPONENTS = ("euclidean", "cosine", "style", "dice")  # ES, CSnew, SS, DC
MEASURE_COMPONENTS: dict[str, tuple[str, ...]] = {
    "euclidean": ("euclidean",),
    "cosine": ("cosine",),
    "style": ("style",),
    "dice": ("dice",),
    "i1_ed": ("euclidean", "dice"),
    "i1_cd": ("cosine", "dice"),
    "i1_ecd": ("euclidean", "cosine", "dice"),
    "i1_se": ("style", "euclidean"),
    "i1_sc": ("style", "cosine"),
    "i1_sd": ("style", "dice"),
}
MEASURES = tuple(MEASURE_COMPONENTS)

_CHUNK_BYTES = 16 << 20  # temporary memory per chunk of candidates


def _chunks(n: int, row_bytes: int):
    step = max(1, _CHUNK_BYTES // max(1, row_bytes))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def squared_distances(q: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Σ_j (X_ij − q_j)² for every row i, from the differences themselves (no cancellation
    for near-duplicates), in float32 chunks; returned as float64."""
    q = np.asarray(q, dtype=np.float32)
    out = np.empty(X.shape[0], dtype=np.float64)
    for sl in _chunks(X.shape[0], X.shape[1] * 4):
        d = X[sl] - q
        out[sl] = np.einsum("ij,ij->i", d, d, dtype=np.float64)
    return out


def euclidean_distances(q: np.ndarray, X: np.ndarray) -> np.ndarray:
    """ED(q, y) for every row y of X (eq. 1)."""
    return np.sqrt(squared_distances(q, X))


def cosine_similarities(q: np.ndarray, X: np.ndarray) -> np.ndarray:
    """CS(q, y) (eq. 3). A zero vector has cosine 0 with everything (no direction)."""
    q64 = np.asarray(q, dtype=np.float64)
    dots = (X @ np.asarray(q, dtype=np.float32)).astype(np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float64)) * np.linalg.norm(q64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cs = np.where(norms > 0, dots / norms, 0.0)
    return np.clip(cs, -1.0, 1.0)


def style_losses(q: np.ndarray, S: np.ndarray) -> np.ndarray:
    """LS(q, y) of eq. 6, exact, given style vectors packed as in ``extract.gram``."""
    return squared_distances(q, S)


def dice_coefficients(q_packed: np.ndarray, q_area: int, M_packed: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """DC (eq. 8) of one bit-packed mask against every row; both empty -> 1, one empty -> 0."""
    M = np.ascontiguousarray(M_packed, dtype=np.uint8)
    qp = np.ascontiguousarray(q_packed, dtype=np.uint8)
    if M.shape[1] % 8 == 0:
        M, qp = M.view(np.uint64), qp.view(np.uint64)
    inter = np.bitwise_count(M & qp).sum(axis=1, dtype=np.int64)
    total = np.asarray(areas, dtype=np.int64) + int(q_area)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2.0 * inter / total, 1.0)


def max_normalised(distances: np.ndarray) -> np.ndarray:
    """1 − d / max d over the candidates (eqs. 2 and 7); all distances 0 -> score 1."""
    d = np.asarray(distances, dtype=np.float64)
    if d.size == 0:
        return d.copy()
    top = d.max()
    if top <= 0:
        return np.ones_like(d)
    return 1.0 - d / top


def cosine_new(cs: np.ndarray) -> np.ndarray:
    """CSnew = (CS + 1) / 2 (eq. 4)."""
    return (np.asarray(cs, dtype=np.float64) + 1.0) / 2.0


def harmonic_mean(*components: np.ndarray) -> np.ndarray:
    """n / Σ 1/c_i (eqs. 9-14); any component <= 0 gives 0, the limit, never NaN."""
    stacked = np.stack([np.asarray(c, dtype=np.float64) for c in components])
    positive = (stacked > 0).all(axis=0)
    with np.errstate(divide="ignore"):
        inv = np.where(stacked > 0, 1.0 / np.where(stacked > 0, stacked, 1.0), 0.0).sum(axis=0)
    return np.where(positive, len(components) / np.where(positive, inv, 1.0), 0.0)


def measure_scores(components: dict[str, np.ndarray], measures=MEASURES) -> dict[str, np.ndarray]:
    """The requested measures from the normalised components ES, CSnew, SS, DC."""
    out = {}
    for name in measures:
        parts = MEASURE_COMPONENTS[name]
        out[name] = components[parts[0]] if len(parts) == 1 else harmonic_mean(*(components[p] for p in parts))
    return out
