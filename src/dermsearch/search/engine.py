"""The exact engine: raw and normalised components of a batch of queries against every row.

The cost of exact search is reading the index matrices, so each is read once per batch of
queries: one matrix product ``Q @ Fᵀ`` gives both the Euclidean and the cosine terms, one
``Q @ Sᵀ`` the style losses, and the bit-packed masks are read once for the Dice overlaps. A
batch of B queries therefore costs about one pass over memory, not B (matrix-matrix products).
The matrices may be in RAM or memory-mapped files; nothing here copies them.

Precision: products are float32 (BLAS); everything after them is float64. Squared distances
use ||q||² + ||x||² − 2 q·x, and the pairs where that would cancel (closer than
``RECHECK_FRACTION`` of the norms: near-duplicates) are recomputed from their differences in
float64, so near-duplicate distances keep full precision (``docs/performance.md``).
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .measures import (
    COMPONENTS,
    cosines_from_dots,
    dice_from_intersections,
    distances_from_dots,
    mask_intersections,
    normalised_by,
    row_maxima,
    row_sqnorms,
)

__all__ = ["Query", "QueryBatch", "ExactEngine", "products", "numpy_products", "torch_products", "kernel_for",
           "KERNELS", "row_parallel_products", "blas_single_threaded",
           "top_k_rows"]


@dataclass(frozen=True)
class Query:
    """The extracted form of a query image."""

    feature: np.ndarray
    style: np.ndarray | None = None
    mask: np.ndarray | None = None      # bit-packed
    mask_area: int = 0
    label: str = "query"


@dataclass(frozen=True)
class QueryBatch:
    """B queries stacked for the matrix-matrix products."""

    features: np.ndarray                # [B, D] float32
    styles: np.ndarray | None = None    # [B, S] float32
    masks: np.ndarray | None = None     # [B, P] uint8, bit-packed
    mask_areas: np.ndarray | None = None  # [B]

    def __len__(self) -> int:
        return self.features.shape[0]

    @classmethod
    def of(cls, queries: Sequence[Query]) -> QueryBatch:
        if not queries:
            raise ValueError("no queries")
        has_style = all(q.style is not None for q in queries)
        has_mask = all(q.mask is not None for q in queries)
        return cls(np.stack([np.asarray(q.feature, np.float32) for q in queries]),
                   np.stack([np.asarray(q.style, np.float32) for q in queries]) if has_style else None,
                   np.stack([np.asarray(q.mask, np.uint8) for q in queries]) if has_mask else None,
                   np.array([q.mask_area for q in queries], dtype=np.int64) if has_mask else None)


SMALL_PRODUCT = 8_000_000        # multiply-adds below which a product is not worth a second thread


def numpy_products(Q: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``Q @ Xᵀ`` in float32 with numpy's BLAS (X not copied), one matrix-vector product per
    query: a query's products do not depend on the batch it came in (a matrix-matrix product sums
    in another order), and X is small enough here to stay in cache between them."""
    Q = np.atleast_2d(np.asarray(Q, dtype=np.float32))
    X = np.asarray(X)
    out = np.empty((Q.shape[0], X.shape[0]), dtype=np.float32)
    for j in range(Q.shape[0]):
        out[j] = X @ Q[j]
    return out


def torch_products(Q: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``Q @ Xᵀ`` in float32 with torch's BLAS (MKL on x86), X not copied: its matrix-vector
    product reads a 3 GB style matrix at the machine's full read bandwidth, where numpy's OpenBLAS
    build reached ~0.8 of it on the CPU where this was tuned (``benchmarks/bench_search.py``)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)    # read-only arrays (memory maps) are fine: never written
        q = torch.from_numpy(np.ascontiguousarray(Q, dtype=np.float32))
        x = torch.from_numpy(np.asarray(X))
    with torch.inference_mode():
        out = torch.mv(x, q[0])[None, :] if q.shape[0] == 1 else q @ x.T
    return out.numpy()


KERNELS = {"numpy": numpy_products, "torch": torch_products}


def kernel_for(rows: int, width: int) -> str:
    """The product kernel for a matrix of ``rows`` x ``width``: torch for large ones (bandwidth),
    numpy below ``SMALL_PRODUCT`` values, where reading is no matter and importing torch (~1 s)
    would cost a small index's search far more than the search itself. One engine uses one kernel
    for all its matrices, and a sharded engine its whole index's, so shards and a local search
    round alike."""
    return "numpy" if rows * width < SMALL_PRODUCT else "torch"


def products(Q: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``Q @ Xᵀ`` in float32 with the kernel for X's size (:func:`kernel_for`)."""
    return KERNELS[kernel_for(*np.shape(X))](Q, X)


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
_BLAS = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="dermsearch-products")
        return _POOL


@contextmanager
def blas_single_threaded():
    """numpy's BLAS on one thread while it lasts (for :func:`row_parallel_products`)."""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController
        _BLAS = ThreadpoolController()
    with _BLAS.limit(limits=1, user_api="blas"):
        yield


def row_parallel_products(Q: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``Q @ Xᵀ`` in float32 with numpy, X's rows split over one thread per core, each product
    single-threaded (run inside :func:`blas_single_threaded`). For fast mode's many mid-sized
    products between bits of Python, where torch's own threads stall on their wake-ups (the
    measurements are in docs/performance.md)."""
    Q = np.ascontiguousarray(Q, dtype=np.float32)
    n = X.shape[0]
    if n * X.shape[1] * Q.shape[0] < SMALL_PRODUCT // 2 or n < 2:
        return np.asarray(Q @ np.asarray(X).T, dtype=np.float32)
    pool = _pool()
    cuts = np.linspace(0, n, pool._max_workers + 1).astype(int)
    out = np.empty((Q.shape[0], n), dtype=np.float32)

    def part(a: int, b: int) -> None:
        out[:, a:b] = Q @ np.asarray(X[a:b]).T

    list(pool.map(part, cuts[:-1], cuts[1:]))
    return out


class ExactEngine:
    """Exact components over matrices that stay where they are (RAM or memory map)."""

    def __init__(self, features: np.ndarray, styles: np.ndarray | None = None, masks: np.ndarray | None = None,
                 mask_areas: np.ndarray | None = None, feature_sqnorms: np.ndarray | None = None,
                 style_sqnorms: np.ndarray | None = None, product=None, kernel: str | None = None):
        """``product``: a ``Q @ Xᵀ`` function; else ``kernel`` (numpy or torch; default: by the widest
        matrix's size, :func:`kernel_for`)."""
        if product is None:
            width = max(features.shape[1], 0 if styles is None else styles.shape[1])
            kernel = kernel or kernel_for(features.shape[0], width)
            product = KERNELS[kernel]
        self.product, self.kernel = product, kernel
        self.features, self.styles, self.masks = features, styles, masks
        self.mask_areas = None if mask_areas is None else np.asarray(mask_areas)
        # ||x||² per row, float64, computed once per index version
        self.feature_sqnorms = row_sqnorms(features) if feature_sqnorms is None else feature_sqnorms
        self.style_sqnorms = None if styles is None else (
            row_sqnorms(styles) if style_sqnorms is None else style_sqnorms)

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def components(self) -> tuple[str, ...]:
        have = {"euclidean", "cosine"}
        if self.styles is not None:
            have.add("style")
        if self.masks is not None:
            have.add("dice")
        return tuple(c for c in COMPONENTS if c in have)

    @property
    def bytes_per_query(self) -> int:
        """Bytes one exact query (or one batch) reads: every matrix once, plus the row norms."""
        total = self.features.nbytes + self.feature_sqnorms.nbytes
        if self.styles is not None:
            total += self.styles.nbytes + self.style_sqnorms.nbytes
        if self.masks is not None:
            total += self.masks.nbytes + self.mask_areas.nbytes
        return int(total)

    def raw(self, Q: QueryBatch, components: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """[B, N] raw values over every row: ``euclidean`` (ED), ``cosine`` (CS), ``style`` (LS), ``dice`` (DC)."""
        want = set(components or self.components)
        out: dict[str, np.ndarray] = {}
        if want & {"euclidean", "cosine"}:
            F = np.asarray(Q.features, dtype=np.float32)
            q_sq = row_sqnorms(F)
            dots = self.product(F, self.features)   # one pass over the feature matrix for both measures
            if "euclidean" in want:
                out["euclidean"] = np.sqrt(distances_from_dots(dots, F, self.features, q_sq, self.feature_sqnorms))
            if "cosine" in want:
                out["cosine"] = cosines_from_dots(dots, q_sq, self.feature_sqnorms)
        if "style" in want and self.styles is not None and Q.styles is not None:
            S = np.asarray(Q.styles, dtype=np.float32)
            out["style"] = distances_from_dots(self.product(S, self.styles), S, self.styles, row_sqnorms(S),
                                               self.style_sqnorms)
        if "dice" in want and self.masks is not None and Q.masks is not None:
            out["dice"] = dice_from_intersections(mask_intersections(Q.masks, self.masks), Q.mask_areas,
                                                  self.mask_areas)
        return out

    @staticmethod
    def maxima(raw: dict[str, np.ndarray], valid: np.ndarray) -> dict[str, np.ndarray]:
        """[B] max-normalisers of ES (max ED) and SS (max LS) over each query's valid rows."""
        return {c: row_maxima(raw[c], valid) for c in ("euclidean", "style") if c in raw}

    @staticmethod
    def normalise(raw: dict[str, np.ndarray], valid: np.ndarray,
                  maxima: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """ES, CSnew, SS, DC. The max-normalisers are each query's maxima over its valid
        (candidate) rows, or ``maxima`` when given (a shard normalising by the global maxima)."""
        if maxima is None:
            maxima = ExactEngine.maxima(raw, valid)
        comp = {}
        if "euclidean" in raw:
            comp["euclidean"] = normalised_by(raw["euclidean"], maxima["euclidean"])
        if "cosine" in raw:
            comp["cosine"] = (raw["cosine"] + 1.0) / 2.0
        if "style" in raw:
            comp["style"] = normalised_by(raw["style"], maxima["style"])
        if "dice" in raw:
            comp["dice"] = raw["dice"]
        return comp


def top_k_rows(scores: np.ndarray, valid: np.ndarray, k: int) -> list[np.ndarray]:
    """Per query, the valid rows with the k best scores, best first; ties keep row order.
    ``k <= 0`` ranks every valid row."""
    out = []
    for s, v in zip(np.atleast_2d(scores), np.atleast_2d(valid)):
        rows = np.flatnonzero(v)
        neg = -s[rows]
        if k <= 0 or k >= rows.size:
            order = np.argsort(neg, kind="stable")
        else:
            kth = np.partition(neg, k - 1)[k - 1]
            cand = np.flatnonzero(neg <= kth)
            order = cand[np.argsort(neg[cand], kind="stable")][:k]
        out.append(rows[order])
    return out
