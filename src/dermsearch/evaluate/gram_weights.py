"""Layer weights β_l of the style loss, fitted on labelled data (an extension beyond the paper).

LS(q, y) = Σ_l β_l² D_l(q, y), where D_l is the squared distance of the two images' packed
Grams of layer l with β = 1. Since the style measure ranks by LS, only the ratios of the
w_l = β_l² matter. :func:`fit_gram_weights` searches non-negative w_l that maximise the
macro-averaged precision at k of the style ranking (every diagnosis weighs the same) by a
coordinate search in log-space from a few starts. The weights are then baked into the stored
style vectors, so LS stays exactly the squared distance of what the index holds.

The fit is a choice made on data: make it on ``val`` (queries) against ``train`` (candidates),
and report ``test`` once. :func:`cross_validated` gives an honest ``val`` figure by fitting on
one half of the val lesions and scoring on the other.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..io import write_json

__all__ = ["GramWeightFit", "IndexFit", "macro_precision_at_k", "fit_gram_weights", "cross_validated",
           "layer_distance_stack", "save_gram_weights", "fit_index_gram_weights"]


@dataclass
class GramWeightFit:
    betas: list[float]              # β_l, in storage order
    shares: list[float]             # w_l · median(D_l), normalised to sum 1: each layer's weight in the loss
    score: float                    # macro-P@k of the fitted weights on the fitting queries
    start: str                      # the start the search began from
    starts: dict[str, float] = field(default_factory=dict)   # every start's macro-P@k
    evaluations: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def macro_precision_at_k(distances: np.ndarray, valid: np.ndarray, query_labels: np.ndarray,
                         candidate_labels: np.ndarray, k: int = 5) -> float:
    """Macro-P@k of ranking candidates by ascending ``distances`` [Q, N] (invalid pairs never
    retrieved): the per-diagnosis mean of each query's fraction of same-diagnosis hits in its top k."""
    d = np.where(valid, distances, np.inf)
    top = np.argpartition(d, k - 1, axis=1)[:, :k]
    p = (np.asarray(candidate_labels)[top] == np.asarray(query_labels)[:, None]).mean(axis=1)
    groups = np.asarray(query_labels)
    return float(np.mean([p[groups == g].mean() for g in np.unique(groups)]))


def layer_distance_stack(queries: np.ndarray, candidates: np.ndarray, layout: Sequence[dict],
                         block: int = 2048) -> np.ndarray:
    """[L, Q, N] float32: per stored Gram, the squared distance with β = 1 (the stored vectors'
    per-layer squared distance divided by β_l²). ``layout`` as in ``extract.gram.style_layout``."""
    out = np.empty((len(layout), len(queries), len(candidates)), dtype=np.float32)
    for li, e in enumerate(layout):
        if e["beta"] <= 0:
            raise ConfigError(f"layer {li} has weight {e['beta']}: its distances cannot be recovered")
        sl = slice(e["offset"], e["offset"] + e["size"])
        q = np.asarray(queries[:, sl], dtype=np.float64) / e["beta"]
        qn = (q * q).sum(1)
        for s in range(0, len(candidates), block):
            c = np.asarray(candidates[s:s + block, sl], dtype=np.float64) / e["beta"]
            d = qn[:, None] + (c * c).sum(1)[None, :] - 2.0 * (q @ c.T)
            out[li, :, s:s + len(c)] = np.maximum(d, 0.0)
    return out


def _coordinate_search(u: np.ndarray, s: float, score: Callable[[np.ndarray], float], factors: Sequence[float],
                       rounds: int) -> tuple[np.ndarray, float]:
    """Refine the weights ``u`` (scoring ``s``): multiply or divide one w_l by each factor, or set it
    to 0 (a zero one is tried back at fractions of the others' mean); keep a change only when it
    strictly improves the score; stop after a round that changes nothing or after ``rounds``."""
    for _ in range(rounds):
        changed = False
        for i in range(len(u)):
            candidates = [u[i] * f for f in factors] + [u[i] / f for f in factors] + [0.0]
            if u[i] == 0:
                candidates = [u[u > 0].mean() * f for f in (0.05, 0.2, 1.0)]
            for v in candidates:
                trial = u.copy()
                trial[i] = v
                t = score(trial)
                if t > s:
                    u, s, changed = trial, t, True
        if not changed:
            break
    return u, s


def fit_gram_weights(stack: np.ndarray, valid: np.ndarray, query_labels: np.ndarray,
                     candidate_labels: np.ndarray, k: int = 5, channels: Sequence[int] | None = None,
                     factors: Sequence[float] = (3.0, 1.5), rounds: int = 4,
                     objective: Callable[[np.ndarray], float] | None = None) -> GramWeightFit:
    """Fit w_l = β_l² >= 0 to maximise macro-P@k of ranking by Σ_l w_l D_l.

    ``objective``, when given, replaces macro-P@k: it takes the per-layer weights w [L] (float32,
    on the scale of ``stack``) and returns the score to maximise, e.g. one that also looks at the
    queries of another source (issue #40's joint rule); ``score`` then holds its value.

    ``stack`` [L, Q, N]: per-layer distances with β = 1 (:func:`layer_distance_stack`). Starts:
    equal shares, β = 1/C_l when ``channels`` are given, and each layer alone; the two best are
    refined by coordinate search (multiply or divide one w_l by each factor, or set it to 0;
    keep a change only when it strictly improves the score) until a round changes nothing."""
    stack = np.asarray(stack, dtype=np.float32)
    L = stack.shape[0]
    med = np.array([np.median(stack[i][valid]) for i in range(L)], dtype=np.float64)
    scale = 1.0 / np.where(med > 0, med, 1.0)            # u_l = 1 gives each layer the same median loss
    evals = 0

    def score(u: np.ndarray) -> float:
        nonlocal evals
        evals += 1
        if not (u > 0).any():
            return -1.0
        w = (u * scale).astype(np.float32)
        if objective is not None:
            return float(objective(w))
        return macro_precision_at_k(np.tensordot(w, stack, axes=1), valid, query_labels, candidate_labels, k)

    starts: dict[str, np.ndarray] = {"equal": np.ones(L)}
    if channels is not None:
        starts["inverse-channels"] = (1.0 / np.asarray(channels, dtype=np.float64) ** 2) / scale
    for i in range(L):
        e = np.zeros(L)
        e[i] = 1.0
        starts[f"layer {i + 1} alone"] = e
    start_scores = {name: score(u) for name, u in starts.items()}
    best_name, best_u, best = None, None, -1.0
    for name in sorted(start_scores, key=lambda n: -start_scores[n])[:2]:
        u, s = _coordinate_search(starts[name].copy(), start_scores[name], score, factors, rounds)
        if s > best:
            best_name, best_u, best = name, u, s
    shares = best_u / best_u.sum()
    betas = np.sqrt(shares * scale)
    return GramWeightFit([float(b) for b in betas], [float(x) for x in shares], float(best), best_name,
                         {n: float(v) for n, v in start_scores.items()}, evals)


def cross_validated(stack: np.ndarray, valid: np.ndarray, query_labels: np.ndarray,
                    candidate_labels: np.ndarray, query_groups: np.ndarray, k: int = 5,
                    channels: Sequence[int] | None = None, seed: int = 0) -> dict:
    """Two-fold cross-validation over query groups (lesions): fit on one half, score the other.
    Returns the held-out macro-P@k of each fold and their query-weighted mean."""
    groups = np.asarray(query_groups)
    uniq = np.unique(groups)
    rng = np.random.default_rng(seed)
    half = set(rng.permutation(uniq)[: len(uniq) // 2].tolist())
    fold = np.array([g in half for g in groups])
    held = []
    for part in (fold, ~fold):
        fit = fit_gram_weights(stack[:, ~part], valid[~part], query_labels[~part], candidate_labels, k, channels)
        w = (np.asarray(fit.betas) ** 2).astype(np.float32)
        held.append((int(part.sum()), macro_precision_at_k(np.tensordot(w, stack[:, part], axes=1), valid[part],
                                                           query_labels[part], candidate_labels, k)))
    total = sum(n for n, _ in held)
    return {"folds": [s for _, s in held], "mean": sum(n * s for n, s in held) / total}


@dataclass
class IndexFit:
    fit: GramWeightFit
    held_out: dict              # cross_validated(): the two folds' held-out macro-P@k and their mean
    before: float               # macro-P@k with the index's own weights
    layout: list[dict]
    info: dict                  # what save_gram_weights writes beside the betas


def fit_index_gram_weights(index, split: dict[str, str], query_splits: Sequence[str] = ("val",),
                           candidate_splits: Sequence[str] = ("train",), k: int = 5,
                           exclude_same: str | None = None) -> IndexFit:
    """Fit the layer weights on an index's labelled rows: the ``query_splits`` rows as queries
    against the ``candidate_splits`` rows (same lesion never a candidate; with ``exclude_same``
    ``patient``, the default when the index stores patients, as in ``evaluate``, no image of the
    query's patient either, and the cross-validation folds group by patient), from the stored style
    vectors (per-layer distances recovered through the index's own β)."""
    import json

    from .exclusion import check, meta_column, strictest_of
    from .metrics import lesion_clusters

    m = index.manifest
    if not m["style_dim"]:
        raise ConfigError(f"{index.directory} stores no style vectors")
    layout = m.get("style_layers")
    if not layout:
        raise ConfigError(f"{index.directory} was built before style layouts were recorded; rebuild it")
    s = index.snapshot()
    diag = np.array([d or "" for d in s.diagnosis], dtype=object)
    splits = np.array([split.get(i, "") for i in s.ids], dtype=object)
    q = np.flatnonzero(np.isin(splits, list(query_splits)) & (diag != "") & (diag != "unknown"))
    c = np.flatnonzero(np.isin(splits, list(candidate_splits)) & (diag != ""))
    if not len(q) or not len(c):
        raise ConfigError(f"no labelled rows in the query splits {list(query_splits)} or the candidate splits "
                         f"{list(candidate_splits)}")
    if len(c) < k:
        raise ConfigError(f"{len(c)} labelled candidate rows in the splits {list(candidate_splits)}, fewer than "
                         f"k = {k}: choose a smaller k or give more candidates")
    lesions = lesion_clusters(s.lesion_id)
    valid = (lesions[q][:, None] != lesions[c][None, :]) & (q[:, None] != c[None, :])
    patients = meta_column([json.loads(t) if t else {} for t in s.meta_json], "patient_id")
    exclude_same = check(exclude_same or strictest_of(patients))
    groups = lesions[q]
    if exclude_same == "patient":
        pq, pc = patients[q], patients[c]
        valid &= ~((pq[:, None] == pc[None, :]) & (pq[:, None] != ""))
        groups = np.array([f"\0patient {p}" if p else g for p, g in zip(pq, groups)], dtype=object)
    stack = layer_distance_stack(s.styles[q], s.styles[c], layout)
    chans = [e["channels"] for e in layout]
    before = (np.asarray([e["beta"] for e in layout]) ** 2).astype(np.float32)
    score_before = macro_precision_at_k(np.tensordot(before, stack, 1), valid, diag[q], diag[c], k)
    fit = fit_gram_weights(stack, valid, diag[q], diag[c], k, chans)
    held_out = cross_validated(stack, valid, diag[q], diag[c], groups, k, chans)
    ext = m["extractor"]
    info = {"gram_pool": ext.get("gram_pool", "image"), "gram_margin": ext.get("gram_margin", 0.0),
            "gram_norm": ext.get("gram_norm", "none"), "tap_channels": m["tap_channels"],
            "network": m.get("network_fingerprint"), "fov": bool(ext.get("fov", False)),
            "max_side": int(ext.get("max_side", 0)),
            "style_network": m.get("style_network_fingerprint"), "colour": ext.get("colour", "none"),
            "layers": [{"stage": e["stage"], "region": e["region"], "channels": e["channels"]} for e in layout],
            "fitted_on": {"index": str(index.directory), "index_fingerprint": index.fingerprint,
                          "queries": list(query_splits), "candidates": list(candidate_splits),
                          "n_queries": int(len(q)), "n_candidates": int(len(c)), "k": k,
                          "exclude_same": exclude_same,
                          f"macro_p@{k}_index_weights": score_before, f"macro_p@{k}_fitted": fit.score,
                          f"macro_p@{k}_cv2_held_out": held_out}}
    return IndexFit(fit, held_out, score_before, layout, info)


def save_gram_weights(path: str | os.PathLike, fit: GramWeightFit, info: dict) -> None:
    """Write a weights file that ``--gram-weights FILE`` reads (atomically)."""
    path = Path(path)
    doc = {"betas": fit.betas, **info, "fit": {k: v for k, v in fit.to_json().items() if k != "betas"}}
    write_json(path, doc, indent=2)
