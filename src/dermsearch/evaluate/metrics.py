"""Retrieval metrics as pure functions over ranked relevance arrays, and bootstrap CIs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.metrics import roc_auc_score

__all__ = [
    "precision_at_k", "average_precision_at_k", "group_means", "macro_mean", "vote_auc", "knn_majority",
    "balanced_accuracy",
    "bootstrap_ci", "lesion_clusters",
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


def knn_majority(neighbour_labels: np.ndarray) -> np.ndarray:
    """Per query, the most frequent label among its ranked neighbours [Q, k]; a tie goes to the
    tied label whose first neighbour ranks highest (the nearest wins)."""
    out = np.empty(len(neighbour_labels), dtype=object)
    for i, row in enumerate(neighbour_labels):
        counts: dict = {}
        for lab in row:
            counts[lab] = counts.get(lab, 0) + 1
        best = max(counts.values())
        out[i] = next(lab for lab in row if counts[lab] == best)
    return out


def balanced_accuracy(true: np.ndarray, predicted: np.ndarray) -> float:
    """Mean over the true classes of the fraction predicted right (sklearn's balanced accuracy)."""
    true, predicted = np.asarray(true, dtype=object), np.asarray(predicted, dtype=object)
    classes = sorted(set(true.tolist()))
    if not classes:
        return float("nan")
    return float(np.mean([(predicted[true == c] == c).mean() for c in classes]))


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
                 level: float = 0.95, clusters: np.ndarray | None = None) -> tuple[float, float]:
    """Percentile bootstrap: ``statistic(indices)`` on ``rounds`` resamples of the ``n`` items.

    Written here rather than with ``scipy.stats.bootstrap``, which resamples items (or pairs) but
    not clusters: the lesion-level CIs need whole lesions drawn together. The item case is the
    same percentile bootstrap (``tests/test_evaluate.py`` checks both against hand-built data).

    ``clusters`` (one label per item, e.g. the query's lesion_id): resample whole clusters with
    replacement and take all their items (a cluster bootstrap), so that several images of one
    lesion count as the one observation they are; ``None`` resamples items one by one."""
    if rounds <= 0 or n == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    if clusters is None:
        draws = (rng.integers(0, n, n) for _ in range(rounds))
    else:
        labels = np.asarray(clusters)
        if len(labels) != n:
            raise ValueError(f"{len(labels)} cluster labels for {n} items")
        _, inverse = np.unique(labels, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        sizes = np.bincount(inverse)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        members = [order[a:a + b] for a, b in zip(starts, sizes)]
        draws = (np.concatenate([members[c] for c in rng.integers(0, len(members), len(members))])
                 for _ in range(rounds))
    values = np.array([statistic(idx) for idx in draws], dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return (float("nan"), float("nan"))
    a = (1 - level) / 2
    return (float(np.quantile(values, a)), float(np.quantile(values, 1 - a)))


def lesion_clusters(lesion_ids) -> np.ndarray:
    """Cluster labels for :func:`bootstrap_ci`: the lesion id, or the item's own position when it has none."""
    return np.array([str(lid) if lid not in (None, "") and not (isinstance(lid, float) and np.isnan(lid))
                     else f"\0item{i}" for i, lid in enumerate(lesion_ids)], dtype=object)
