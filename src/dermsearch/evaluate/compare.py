"""Paired comparison of two models (two indexes of the same images) on the same queries.

Two reports with overlapping CIs say little about whether one model is better: both answer the
same queries, so most of each CI's width is the queries' own difficulty, which the difference does
not have. :func:`paired_difference` resamples the queries' units (lesions by default) *once* per
round and computes both models' figure on that one resample, so the CI of B - A reflects only how
the two models disagree. :func:`compare` runs it for every measure the two indexes share (the
same measure in both), for each model's own measure chosen on other queries (e.g. `val`), and for
the ensemble heads.

The comparison decides nothing by itself: which figure and which margin decide is a rule fixed
before it runs (docs/evaluation.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np

from ..errors import ConfigError
from ..search import MEASURES
from .evaluator import (
    HEAD_UNAVAILABLE,
    EvaluationConfig,
    Evaluator,
    QuerySet,
    _auc_at,
    _macro_at,
    best_measure,
    first_line,
    head_clusters,
    query_clusters,
)
from .metrics import bootstrap_ci, macro_mean, vote_auc

__all__ = ["paired_difference", "Comparison", "compare", "align_queries", "comparison_markdown"]


def paired_difference(statistic_a: Callable[[np.ndarray], float], statistic_b: Callable[[np.ndarray], float],
                      n: int, rounds: int, seed: int, clusters: np.ndarray | None = None) -> dict:
    """B - A of a statistic of ``n`` paired items, with a percentile bootstrap CI in which each
    round draws one resample (of items, or of whole ``clusters``) and scores both models on it."""
    every = np.arange(n)
    a, b = float(statistic_a(every)), float(statistic_b(every))
    ci = bootstrap_ci(lambda idx: statistic_b(idx) - statistic_a(idx), n, rounds, seed, clusters=clusters)
    return {"a": a, "b": b, "b_minus_a": b - a, "ci95": [ci[0], ci[1]]}


@dataclass
class Comparison:
    """B versus A on the same queries and candidates; every entry is :func:`paired_difference`'s."""

    a: str
    b: str
    queries: int
    candidates: int
    config: EvaluationConfig
    measures: dict[str, dict] = field(default_factory=dict)     # measure -> metric -> paired difference
    chosen: dict[str, dict] = field(default_factory=dict)       # metric -> each model's own chosen measure
    head: dict | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"a": self.a, "b": self.b, "queries": self.queries, "candidates": self.candidates,
                "config": {"k": self.config.k, "vote_k": self.config.vote_k, "bootstrap": self.config.bootstrap,
                           "ci_unit": self.config.ci_unit, "seed": self.config.seed},
                "measures": self.measures, "chosen": self.chosen, "head": self.head, "notes": self.notes}


def align_queries(a: QuerySet, b: QuerySet) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``a`` and ``b`` of the query ids both hold, in ``a``'s order. The labels must agree:
    a comparison of two indexes that disagree on a query's diagnosis compares two data sets."""
    for name, q in (("first", a), ("second", b)):
        twice = [i for i, n in Counter(map(str, q.ids)).items() if n > 1]
        if twice:
            raise ConfigError(f"the {name} query set holds {twice[0]} more than once: a paired comparison needs "
                              "one row per image")
    where = {str(i): n for n, i in enumerate(b.ids)}
    ia = np.array([n for n, i in enumerate(a.ids) if str(i) in where], dtype=np.int64)
    ib = np.array([where[str(a.ids[n])] for n in ia], dtype=np.int64)
    if len(ia) == 0:
        raise ConfigError("the two query sets share no image")

    def same(i: int, j: int) -> bool:
        mel = a.melanoma[i] == b.melanoma[j] or (np.isnan(a.melanoma[i]) and np.isnan(b.melanoma[j]))
        return a.diagnosis[i] == b.diagnosis[j] and mel and (a.lesion_id[i] or None) == (b.lesion_id[j] or None)

    bad = [str(a.ids[i]) for i, j in zip(ia, ib) if not same(i, j)]
    if bad:
        raise ConfigError(f"the two indexes label {len(bad)} shared queries differently (diagnosis, melanoma or "
                          f"lesion; e.g. {bad[0]}): compare indexes of the same labelled images")
    return ia, ib


def _take(q: QuerySet, rows: np.ndarray) -> QuerySet:
    def pick(x):
        return None if x is None else x[rows]

    return replace(q, ids=q.ids[rows], diagnosis=q.diagnosis[rows], melanoma=q.melanoma[rows],
                   lesion_id=q.lesion_id[rows], features=q.features[rows], styles=pick(q.styles),
                   masks=pick(q.masks), mask_areas=pick(q.mask_areas), paths=pick(q.paths))


def compare(a: Evaluator, b: Evaluator, queries_a: QuerySet, queries_b: QuerySet, candidate_ids=None,
            config: EvaluationConfig = EvaluationConfig(), selection: tuple[list, list] | None = None,
            names: tuple[str, str] = ("a", "b")) -> Comparison:
    """Paired differences B - A on the queries both sets hold (each model's own vectors for them).

    ``candidate_ids``: the candidates, the same in both indexes (None: every row, which must be the
    same set in both). ``selection`` = (selection query ids, their candidate ids): each model's
    measure is also chosen there by the highest macro-P@k and by the highest vote AUC (as
    ``evaluate --choose-on``), and the difference of the two chosen figures reported."""
    ids_a, ids_b = set(map(str, a.searcher.snapshot.ids)), set(map(str, b.searcher.snapshot.ids))
    cands = sorted(ids_a) if candidate_ids is None else sorted(map(str, candidate_ids))
    if candidate_ids is None and ids_a != ids_b:
        raise ConfigError(f"the indexes hold different images ({len(ids_a)} vs {len(ids_b)}): name the "
                          "candidates both hold")
    missing = [i for i in cands if i not in ids_a or i not in ids_b]
    if missing:
        raise ConfigError(f"{len(missing)} candidates are not in both indexes (e.g. {missing[0]})")
    ia, ib = align_queries(queries_a, queries_b)
    qa, qb = _take(queries_a, ia), _take(queries_b, ib)
    notes = []
    if len(ia) < len(queries_a) or len(ib) < len(queries_b):
        notes.append(f"{len(ia)} queries in both sets are compared ({len(queries_a)} and {len(queries_b)} given)")
    out_a = a.outcomes(qa, *a.rank(qa, cands, config), config)
    out_b = b.outcomes(qb, *b.rank(qb, cands, config), config)
    clusters = query_clusters(qa, config)
    labelled, known = qa.diagnosis != "", ~np.isnan(qa.melanoma)
    cl_lab = None if clusters is None else clusters[labelled]
    cl_mel = None if clusters is None else clusters[known]
    k, vk, rounds = config.k, config.vote_k, config.bootstrap
    macro, vote = f"macro_p@{k}", f"melanoma_auc_vote{vk}"

    def diff(ma: str, mb: str, metric: str) -> dict:
        oa, ob = out_a[ma], out_b[mb]
        sd = config.seed + 1000 * MEASURES.index(mb)
        if metric == macro:
            return paired_difference(partial(_macro_at, oa.precision, oa.groups),
                                     partial(_macro_at, ob.precision, ob.groups), len(oa.precision), rounds, sd, cl_lab)
        return paired_difference(partial(_auc_at, oa.melanoma, oa.votes), partial(_auc_at, ob.melanoma, ob.votes),
                                 len(oa.melanoma), rounds, sd, cl_mel)

    shared = [m for m in MEASURES if m in out_a and m in out_b]
    result = Comparison(names[0], names[1], len(qa), len(cands), config, notes=notes)
    result.measures = {m: {macro: diff(m, m, macro), vote: diff(m, m, vote)} for m in shared}
    if selection is not None:
        sel_ids, sel_cands = [str(i) for i in selection[0]], [str(i) for i in selection[1]]
        if not sel_ids or not sel_cands:
            raise ConfigError("no queries or no candidates to choose the measures on")
        if set(sel_ids) & set(map(str, qa.ids)):
            raise ConfigError("the measures must be chosen on other queries than those compared")
        absent = [i for i in sel_ids + sel_cands if i not in ids_a or i not in ids_b]
        if absent:
            raise ConfigError(f"{len(absent)} images to choose the measures on are not in both indexes "
                              f"(e.g. {absent[0]})")
        values_a = _selection_values(a, sel_ids, sel_cands, config)
        values_b = _selection_values(b, sel_ids, sel_cands, config)
        for metric in (macro, vote):
            ma, mb = best_measure(values_a[metric]), best_measure(values_b[metric])
            result.chosen[metric] = {"measure_a": ma, "measure_b": mb, "chosen_on": len(sel_ids),
                                     **diff(ma, mb, metric)}
    result.head = _head(a, b, qa, qb, config, notes)
    return result


def _selection_values(ev: Evaluator, ids: list[str], candidates: list[str], config: EvaluationConfig) -> dict:
    """Each measure's macro-P@k and vote AUC on the selection queries (the values `--choose-on` ranks)."""
    q = ev.queries_from_index(ids)
    out = ev.outcomes(q, *ev.rank(q, candidates, config), config)
    return {f"macro_p@{config.k}": {m: macro_mean(o.precision, o.groups) for m, o in out.items()},
            f"melanoma_auc_vote{config.vote_k}": {m: vote_auc(o.melanoma, o.votes) for m, o in out.items()}}


def _head(a: Evaluator, b: Evaluator, qa: QuerySet, qb: QuerySet, config: EvaluationConfig,
          notes: list[str]) -> dict | None:
    try:
        pa, pb = a.head_probabilities(qa), b.head_probabilities(qb)
    except HEAD_UNAVAILABLE as e:                     # e.g. an index of an earlier packaged model
        notes.append(f"heads not compared: {first_line(e)}")
        return None
    if pa is None or pb is None:
        notes.append("heads not compared: " + ("neither model has" if pa is None and pb is None else
                                                "only one model has") + " a trained head")
        return None
    known = ~np.isnan(qa.melanoma)
    y = qa.melanoma[known]
    return {"melanoma_auc_head": paired_difference(partial(_auc_at, y, pa[known][:, None]),
                                                   partial(_auc_at, y, pb[known][:, None]), len(y),
                                                   config.bootstrap, config.seed, head_clusters(qa, config))}


def comparison_markdown(c: Comparison) -> str:
    """A Markdown table of a :class:`Comparison` (B - A with its paired 95 % CI)."""
    def cell(d: dict) -> str:
        lo, hi = d["ci95"]
        return f"{d['a']:.3f} | {d['b']:.3f} | {d['b_minus_a']:+.3f} ({lo:+.3f} to {hi:+.3f})"

    k, vk = c.config.k, c.config.vote_k
    macro, vote = f"macro_p@{k}", f"melanoma_auc_vote{vk}"
    lines = [f"**Paired comparison**: A = `{c.a}`, B = `{c.b}`; {c.queries} queries, {c.candidates} candidates, "
             f"95 % CIs of B - A from {c.config.bootstrap} resamples of the queries' "
             f"{'lesions' if c.config.ci_unit == 'lesion' else 'images'}, the same for both models.", ""]
    if c.chosen:
        lines += ["| figure (each model's measure chosen on other queries) | A | B | B - A (95 % CI) |",
                  "|---|---|---|---|"]
        for metric, d in c.chosen.items():
            lines.append(f"| {metric} (`{d['measure_a']}` / `{d['measure_b']}`) | {cell(d)} |")
        lines.append("")
    if c.head:
        lines += ["| ensemble head | A | B | B - A (95 % CI) |", "|---|---|---|---|",
                  f"| melanoma AUC | {cell(c.head['melanoma_auc_head'])} |", ""]
    lines += [f"| measure | {macro} A | B | B - A (95 % CI) | vote AUC A | B | B - A (95 % CI) |",
              "|---|---|---|---|---|---|---|"]
    for m, d in c.measures.items():
        lines.append(f"| `{m}` | {cell(d[macro])} | {cell(d[vote])} |")
    if c.notes:
        lines += [""] + [f"- {n}" for n in c.notes]
    return "\n".join(lines)
