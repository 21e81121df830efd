"""Fitting the optional metadata melanoma head (``models/metadata_head.py``) on an index's rows.

The rule, fixed in code: a logistic regression (scikit-learn, L2) over the head's inputs is fitted on
the rows of ``fit_splits`` (default ``train``) for each C in :data:`C_GRID`; the C whose head has the
highest melanoma AUC on the rows of ``choose_on`` (default ``val``) is kept (ties: the smaller C,
the stronger regularisation), still fitted on ``fit_splits`` alone so that ``choose_on`` stays the
selection set and ``test`` is never looked at. Rows of unknown diagnosis are left out, as everywhere.

A caveat of the default: the packaged image head was trained on ``train``, so its probabilities there
are more confident than on new images, and the fitted weight of the image logit leans on them. The
head's figures on ``test`` (never used here) say what that costs; fitting on rows the image head never
saw (``--fit-split val --choose-on ...``) is the alternative when there are enough of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from ..errors import ConfigError
from ..models.metadata_head import COLUMNS, MetadataHead, design_matrix, read_metadata
from .evaluator import Evaluator, QuerySet

__all__ = ["fit_metadata_head", "MetadataHeadFit", "C_GRID"]

C_GRID = (0.01, 0.1, 1.0, 10.0)


@dataclass(frozen=True)
class MetadataHeadFit:
    head: MetadataHead
    auc_by_c: dict              # C -> AUC on the choose_on rows
    auc_image_only: float       # the image head's own AUC on the same rows
    rows: dict                  # counts: fit / choose rows, melanomas, rows with each kind of metadata


def _rows(evaluator: Evaluator, split: dict[str, str], names: Sequence[str]) -> tuple[QuerySet, np.ndarray]:
    ids = [str(i) for i in evaluator.searcher.snapshot.ids if split.get(str(i)) in set(names)]
    if not ids:
        raise ConfigError(f"no index row is in split(s) {', '.join(names)}")
    q = evaluator.queries_from_index(ids)
    p = evaluator.head_probabilities(q)
    if p is None:
        raise ConfigError("the index's model has no trained classification head: a metadata head reads its "
                          "probability (index with the packaged ensemble or a trained one)")
    return q, p


def fit_metadata_head(evaluator: Evaluator, split: dict[str, str], fit_splits: Sequence[str] = ("train",),
                      choose_on: Sequence[str] = ("val",)) -> MetadataHeadFit:
    """The head fitted by the module's rule (see the module doc)."""
    overlap = set(fit_splits) & set(choose_on)
    if overlap:
        raise ConfigError(f"the split(s) {', '.join(sorted(overlap))} would both fit the head and choose its "
                          "regularisation: give disjoint --fit-split and --choose-on")
    qf, pf = _rows(evaluator, split, fit_splits)
    qc, pc = _rows(evaluator, split, choose_on)
    kf, kc = ~np.isnan(qf.melanoma), ~np.isnan(qc.melanoma)
    yf, yc = qf.melanoma[kf].astype(int), qc.melanoma[kc].astype(int)
    for name, y in (("+".join(fit_splits), yf), ("+".join(choose_on), yc)):
        if not 0 < y.sum() < len(y):
            raise ConfigError(f"the {name} rows need melanomas and other lesions to fit a melanoma head "
                              f"({int(y.sum())} of {len(y)} are melanomas)")
    metas_f, metas_c = list(qf.meta[kf]), list(qc.meta[kc])
    ages = np.array([a for a, _, _ in map(read_metadata, metas_f) if a is not None])
    age_mean, age_std = (float(ages.mean()), float(ages.std())) if len(ages) > 1 else (0.0, 1.0)
    age_std = age_std if age_std > 0 else 1.0
    xf = design_matrix(pf[kf], metas_f, age_mean, age_std)
    xc = design_matrix(pc[kc], metas_c, age_mean, age_std)
    fits, aucs = {}, {}
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=2000).fit(xf, yf)
        fits[c] = model
        aucs[c] = float(roc_auc_score(yc, model.predict_proba(xc)[:, 1]))
    best = max(C_GRID, key=lambda c: (aucs[c], -c))
    model = fits[best]
    counts = {"fit": int(len(yf)), "fit_melanoma": int(yf.sum()), "choose": int(len(yc)),
              "choose_melanoma": int(yc.sum()), "fit_splits": list(fit_splits), "choose_on": list(choose_on)}
    for j, name in ((2, "fit_rows_without_age"),):
        counts[name] = int(xf[:, j].sum())
    counts["fit_rows_with_sex"] = int(xf[:, 3:5].sum())
    counts["fit_rows_with_site"] = int(xf[:, 5:].sum())
    head = MetadataHead(evaluator.searcher.index.fingerprint, tuple(float(v) for v in model.coef_[0]),
                        float(model.intercept_[0]), age_mean, age_std, float(best),
                        {**counts, "rule": f"C in {list(C_GRID)} by the AUC on {'+'.join(choose_on)}, "
                                          f"fitted on {'+'.join(fit_splits)}",
                         "auc_choose_by_c": {str(c): aucs[c] for c in C_GRID}})
    assert len(head.coef) == len(COLUMNS)
    return MetadataHeadFit(head, aucs, float(roc_auc_score(yc, pc[kc])), counts)
