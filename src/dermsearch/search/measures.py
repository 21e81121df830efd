"""The ten similarity measures of SPEC section 2, as pure numpy functions.

Raw quantities (distances, similarities, overlaps) are computed for one query against every
candidate at once; the normalised components (ES, CSnew, SS, DC) and the harmonic-mean I1
scores are element-wise. Higher is more similar for every measure.
"""

from __future__ import annotations

import numpy as np

from .. import names

__all__ = [
    "MEASURE_INFO",
    "MEASURES", "COMPONENTS", "MEASURE_COMPONENTS",
    "stored_components",
    "row_sqnorms", "distances_from_dots", "cosines_from_dots",
    "mask_intersections", "dice", "dice_from_intersections",
    "row_maxima", "normalised_by",
    "cosine_new", "harmonic_mean", "measure_scores",
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


def stored_components(style: bool, masks: bool) -> tuple[str, ...]:
    """The components an index (or an engine) can compute: ED and CS always, LS with style
    vectors, DC with masks, in ``COMPONENTS`` order."""
    have = {"euclidean": True, "cosine": True, "style": bool(style), "dice": bool(masks)}
    return tuple(c for c in COMPONENTS if have[c])
assert MEASURES == names.MEASURES, "dermsearch.names.MEASURES must list the measures in this order"

# For people: a plain-language name and one line on what each measure compares (pages, sheets).
MEASURE_INFO: dict[str, tuple[str, str]] = {
    "euclidean": ("Overall appearance", "Distance between the two lesions' learned descriptions (1024 numbers from the "
                                        "network); 1 = the same, 0 = the least alike here."),
    "cosine": ("Overall appearance (pattern)", "Like overall appearance, but compares the pattern of the description, "
                                               "not its strength."),
    "style": ("Colour and texture", "Colour, texture and structure statistics of the lesion at seven levels of detail "
                                    "(Gram matrices)."),
    "dice": ("Outline overlap", "How much the two lesion outlines overlap when the images are laid on each other."),
    "i1_ed": ("Appearance + outline", "High only when the overall appearance and the outline overlap both are."),
    "i1_cd": ("Appearance pattern + outline", "High only when the appearance pattern and the outline overlap "
                                              "both are."),
    "i1_ecd": ("Appearance, pattern + outline", "High only when appearance, pattern and outline overlap all are."),
    "i1_se": ("Texture + appearance", "High only when colour/texture and overall appearance both are."),
    "i1_sc": ("Texture + appearance pattern", "High only when colour/texture and the appearance pattern both are."),
    "i1_sd": ("Texture + outline", "High only when colour/texture and the outline overlap both are."),
}

# Rows whose expanded distance is below this fraction of ||x||² + ||q||² are recomputed from
# their differences (cancellation would otherwise cost precision there: near-duplicates). On
# HAM10000 style vectors 1% catches the near-duplicates and almost nothing else (5% would
# recheck up to 600 rows for some queries); the measured worst relative error of the rows not
# rechecked is in docs/performance.md.
RECHECK_FRACTION = 0.01


def row_sqnorms(X: np.ndarray) -> np.ndarray:
    """||x||² of every row, accumulated in float64 (cache these per index version)."""
    return np.einsum("ij,ij->i", X, X, dtype=np.float64)


def distances_from_dots(dots: np.ndarray, Q: np.ndarray, X: np.ndarray, q_sqnorms: np.ndarray,
                        x_sqnorms: np.ndarray, extra_sq=None) -> np.ndarray:
    """[B, N] squared distances from the float32 products ``dots = Q @ X.T``.

    ||q||² + ||x||² − 2 q·x in float64; pairs where that expansion cancels (near-duplicates:
    distance below ``RECHECK_FRACTION`` of the norms) are recomputed from their differences in
    float64, so a near-duplicate's distance keeps full precision (an image's distance to itself is 0).
    ``extra_sq`` [B]: each query's ‖q‖² over columns X does not hold (X is 0 there; in
    ``q_sqnorms`` already). numpy arrays, or torch tensors on any device (the device engine's):
    one arithmetic for both.
    """
    ops = _ops(dots)
    scale = q_sqnorms[:, None] + x_sqnorms[None, :]
    d = scale - 2.0 * ops.f64(dots)
    qi, xi = ops.nonzero(d <= RECHECK_FRACTION * scale)
    for start in range(0, len(qi), 64):
        a, b = qi[start:start + 64], xi[start:start + 64]
        exact = ops.sqsum(ops.f64(X[b]) - ops.f64(Q[a]))
        d[a, b] = exact if extra_sq is None else exact + extra_sq[a]
    return ops.clamp0(d)


def cosines_from_dots(dots: np.ndarray, q_sqnorms: np.ndarray, x_sqnorms: np.ndarray) -> np.ndarray:
    """[B, N] cosine similarities from the products; a zero vector has cosine 0 (numpy arrays or
    torch tensors, as :func:`distances_from_dots`)."""
    ops = _ops(dots)
    norms = ops.sqrt(q_sqnorms)[:, None] * ops.sqrt(x_sqnorms)[None, :]
    ok = norms > 0
    return ops.clip1(ops.where(ok, ops.f64(dots) / ops.where(ok, norms, 1.0), 0.0))


class _NumpyOps:
    """The array operations the shared formulas need, for numpy. ``sqsum`` squares its (fresh)
    argument in place and sums each row pairwise: a row's sum does not depend on how many rows
    are summed with it (einsum's differs for one row), so a shard of the rows gets the whole's."""

    f64 = staticmethod(lambda a: np.asarray(a, dtype=np.float64))
    nonzero = staticmethod(np.nonzero)
    sqsum = staticmethod(lambda diff: np.square(diff, out=diff).sum(1))
    clamp0 = staticmethod(lambda d: np.maximum(d, 0.0))
    sqrt = staticmethod(np.sqrt)
    where = staticmethod(np.where)
    clip1 = staticmethod(lambda c: np.clip(c, -1.0, 1.0))


class _TorchOps:
    """The same for torch tensors (no import: only tensor methods and the module of the tensor)."""

    f64 = staticmethod(lambda a: a.double())
    nonzero = staticmethod(lambda m: m.nonzero(as_tuple=True))
    sqsum = staticmethod(lambda diff: (diff ** 2).sum(1))
    clamp0 = staticmethod(lambda d: d.clamp_min(0.0))
    sqrt = staticmethod(lambda a: a.sqrt())
    where = staticmethod(lambda c, a, b: _torch().where(c, a, b))
    clip1 = staticmethod(lambda c: c.clamp(-1.0, 1.0))


def _torch():
    import torch

    return torch


def _ops(a):
    return _TorchOps if hasattr(a, "new_ones") else _NumpyOps


def dice(inter, total):
    """The Dice coefficient (eq. 8) 2|A∩B| / (|A| + |B|) from overlap counts ``inter`` and the
    sums of the two areas ``total``; both masks empty -> 1. Numbers, numpy arrays or torch tensors
    (the same formula on every device: search, explanations, segmenter evaluation)."""
    if hasattr(total, "new_ones"):                    # a torch tensor: stays on its device
        one = total.new_ones(())
        return (2.0 * inter / total.where(total > 0, one)).where(total > 0, one)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.asarray(total) > 0, 2.0 * np.asarray(inter) / total, 1.0)


def dice_from_intersections(inter: np.ndarray, q_areas: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """[B, N] Dice from overlap counts: 2|A∩B| / (|A| + |B|); both empty -> 1."""
    return dice(inter, np.asarray(q_areas, np.float64)[:, None] + np.asarray(areas, np.float64)[None, :])


def mask_intersections(Q_packed: np.ndarray, M_packed: np.ndarray, block: int = 2048) -> np.ndarray:
    """[B, N] pixel overlaps of bit-packed query masks with bit-packed rows.

    One query: AND + popcount over the packed bytes (the masks are read once, 1 bit per pixel).
    Several: per block of rows, unpacked to float32 and one matrix product (exact: counts stay far
    below 2**24), so each block is read once for the whole batch.
    """
    Q = np.ascontiguousarray(Q_packed, dtype=np.uint8)
    M = np.asarray(M_packed)
    if Q.shape[0] == 1:
        # in blocks of rows that stay in cache: AND and popcount in place, then one row sum
        q = Q[0].view(np.uint64) if Q.shape[1] % 8 == 0 else Q[0]
        out = np.empty((1, M.shape[0]), dtype=np.float64)
        step = 256
        tmp = np.empty((step, q.shape[0]), dtype=q.dtype)
        for start in range(0, M.shape[0], step):
            blk = np.ascontiguousarray(M[start:start + step], dtype=np.uint8).view(q.dtype)
            t = tmp[:blk.shape[0]]
            np.bitwise_and(blk, q, out=t)
            np.bitwise_count(t, out=t)
            out[0, start:start + blk.shape[0]] = t.sum(axis=1, dtype=np.int64)
        return out
    Qf = np.unpackbits(Q, axis=1).astype(np.float32)
    out = np.empty((Q.shape[0], M.shape[0]), dtype=np.float64)
    for start in range(0, M.shape[0], block):
        blk = np.unpackbits(np.asarray(M[start:start + block], dtype=np.uint8), axis=1).astype(np.float32)
        out[:, start:start + blk.shape[0]] = Qf @ blk.T
    return out


def row_maxima(D: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """[B] the largest valid entry of each row (−inf where a row has none)."""
    if D.shape[1] == 0:
        return np.full(D.shape[0], -np.inf)
    return np.where(valid, D, -np.inf).max(axis=1)


def normalised_by(D: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Row-wise 1 − d / top (eqs. 2 and 7) for given maxima ``top`` [B] of [B, N] values; a max of
    0 (or none) gives 1. The one max-normalisation of every engine: float64, or float32 when both
    ``D`` and ``top`` are (fast mode's estimates, which only choose candidates)."""
    single = np.asarray(D).dtype == np.float32 and np.asarray(top).dtype == np.float32
    top = np.asarray(top, dtype=np.float32 if single else np.float64)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(top > 0, 1.0 - D / np.where(top > 0, top, 1.0), 1.0)


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
