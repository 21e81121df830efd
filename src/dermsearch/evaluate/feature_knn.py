"""Retrieval figures of a raw feature matrix (no index): what a training run selects on.

The same figures as :class:`~dermsearch.evaluate.Evaluator` reports for the ``euclidean`` and
``cosine`` measures (their rankings are those of the Euclidean distance and of the cosine of the
feature), computed straight from feature arrays so a trainer can score an epoch in a second:
macro-P@5 over the diagnoses, P@5, the 16-neighbour melanoma vote AUC and the balanced accuracy
of the 5-neighbour majority vote. Candidates of the query's own lesion never count.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .metrics import balanced_accuracy, knn_majority, macro_mean, precision_at_k, vote_auc

__all__ = ["feature_neighbours", "feature_retrieval"]


def feature_neighbours(queries: np.ndarray, candidates: np.ndarray, k: int, metric: str = "euclidean",
                       query_groups=None, candidate_groups=None, block: int = 1024) -> np.ndarray:
    """[Q, min(k, C)] candidate indices, nearest first (ties: lower index first); same-group pairs are
    ranked last (as infinitely far)."""
    if metric not in ("euclidean", "cosine"):
        raise ConfigError(f"metric must be euclidean or cosine, not {metric!r}")
    q = np.asarray(queries, dtype=np.float64)
    c = np.asarray(candidates, dtype=np.float64)
    if metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    c2 = (c * c).sum(1)
    qg = None if query_groups is None else np.asarray(query_groups, dtype=object)
    cg = None if candidate_groups is None else np.asarray(candidate_groups, dtype=object)
    k = min(k, len(c))       # fewer candidates than k: all of them, ranked
    out = np.empty((len(q), k), dtype=np.int64)
    for lo in range(0, len(q), block):
        qb = q[lo:lo + block]
        d = c2[None, :] - 2.0 * qb @ c.T if metric == "euclidean" else -(qb @ c.T)
        if qg is not None:
            d[qg[lo:lo + block, None] == cg[None, :]] = np.inf
        out[lo:lo + block] = np.argsort(d, axis=1, kind="stable")[:, :k]   # ties: lower index first
    return out


# the query side and the candidate side each take vectors, labels, melanoma and groups (PLR0913's limit is 10)
def feature_retrieval(queries: np.ndarray, query_labels, query_melanoma, candidates: np.ndarray,  # noqa: PLR0913
                      candidate_labels, candidate_melanoma, metric: str = "euclidean", query_groups=None,
                      candidate_groups=None, k: int = 5, vote_k: int = 16) -> dict:
    """{macro_p_at_5, p_at_5, vote_auc, knn_balanced_accuracy} of ``queries`` against ``candidates``.

    Labels outside the candidates' classes (e.g. another archive's extra diagnoses) count as
    never matched; ``query_melanoma`` entries < 0 (unknown) are left out of the vote AUC."""
    nn_idx = feature_neighbours(queries, candidates, max(k, vote_k), metric, query_groups, candidate_groups)
    ql = np.asarray(query_labels, dtype=object)
    cl = np.asarray(candidate_labels, dtype=object)
    qm = np.asarray(query_melanoma)
    cm = np.asarray(candidate_melanoma)
    p5 = precision_at_k(cl[nn_idx[:, :k]] == ql[:, None])
    known = qm >= 0
    return {"macro_p_at_5": macro_mean(p5, ql), "p_at_5": float(p5.mean()),
            "vote_auc": vote_auc(qm[known], cm[nn_idx[known, :vote_k]]),
            "knn_balanced_accuracy": balanced_accuracy(ql, knn_majority(cl[nn_idx[:, :k]]))}
