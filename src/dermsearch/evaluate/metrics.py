"""Retrieval metrics as pure functions over ranked relevance arrays, and bootstrap CIs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.metrics import roc_auc_score

__all__ = [
    "precision_at_k", "average_precision_at_k", "group_means", "macro_mean", "vote_auc",
    "bootstrap_ci",
]


def precision_at_k(relevant: np.ndarray) -> np.ndarray:
    """Per query: the fraction of its top-k that is relevant. ``relevant``: [Q, k] bool."""
    return np.asarray(relevant, dtype=np.float64).mean(axis=1)


def average_precision_at_k(relevant: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """Per query AP@k = Σ_i P@i · rel_i / min(k, R), R = relevant candidates in the whole
    candidate set; a query with R = 0 gets 0."""
    rel = np.asarray(relevant, dtype=np.float64)
    k = rel.shape[1]
    prec = np.cumsum(rel, axis=1) / np.arange(1, k + 1)
    denom = np.minimum(k, np.asarray(n_relevant))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (prec * rel).sum(axis=1) / np.where(denom > 0, denom, 1), 0.0)


def group_means(values: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    return {str(g): float(values[groups == g].mean()) for g in sorted(set(groups.tolist()))}


def macro_mean(values: np.ndarray, groups: np.ndarray) -> float:
    """Mean over groups of the per-group mean (every diagnosis weighs the same)."""
    return float(np.mean(list(group_means(values, groups).values())))


def vote_auc(is_melanoma: np.ndarray, neighbour_melanoma: np.ndarray) -> float:
    """Melanoma AUC of the neighbour vote: score = fraction of melanomas among the neighbours."""
    y = np.asarray(is_melanoma).astype(int)
    if y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, np.asarray(neighbour_melanoma, dtype=np.float64).mean(axis=1)))


def bootstrap_ci(statistic: Callable[[np.ndarray], float], n: int, rounds: int, seed: int,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap over queries: ``statistic(indices)`` on ``rounds`` resamples."""
    if rounds <= 0 or n == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, n)) for _ in range(rounds)], dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return (float("nan"), float("nan"))
    a = (1 - level) / 2
    return (float(np.quantile(values, a)), float(np.quantile(values, 1 - a)))
