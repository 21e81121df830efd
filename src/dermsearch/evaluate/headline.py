"""The headline measure of a report, chosen by a rule fixed before the reported queries are seen.

The rule: the measure with the highest metric on *other* queries (a selection split such as HAM
``val``; with ``also``, the sum over that split and other sources' selection splits, equally
weighted), ties in the order of :data:`~dermsearch.search.MEASURES`. :class:`.Evaluator` exposes it
as ``headline_from`` and ``headline_on_splits``; ``dermsearch evaluate --choose-on`` /
``--choose-also-on`` call those.
"""

from __future__ import annotations

import dataclasses

from ..errors import ConfigError
from ..search import MEASURES

__all__ = ["choose_headline", "split_selection", "best_measure", "choose_on"]


def choose_headline(selection, metric: str) -> tuple[str, dict[str, float]]:
    """The measure with the highest ``metric`` in ``selection`` (an evaluation on other queries,
    e.g. val), ties in the order of MEASURES; and every measure's value there."""
    values = {m: float(v[metric]["value"]) for m, v in selection.measures.items()}
    return best_measure(values), values


def split_selection(ids, split: dict, names, candidate_ids=None) -> tuple[list, list]:
    """The rows a rule chooses on: ``ids`` in the splits ``names`` (by ``split``, id -> split) as
    queries, and the candidates (``candidate_ids``, default ``ids``) outside them."""
    names = set(names)
    pool = list(ids) if candidate_ids is None else candidate_ids
    return [i for i in ids if split.get(i) in names], [i for i in pool if split.get(i) not in names]


def best_measure(values: dict[str, float]) -> str:
    """The measure with the highest value, ties in the order of MEASURES (the headline rule)."""
    return max(values, key=lambda m: (values[m], -MEASURES.index(m)))


def choose_on(evaluator, report, selection_ids, candidate_ids, metric: str, config, label: str,
              also=()) -> None:
    """Name ``report``'s headline measure: the best ``metric`` with other index rows of
    ``evaluator``'s index (``selection_ids``, e.g. val) as queries against ``candidate_ids``. With
    ``also`` (each: external queries, e.g. another clinic's ``xval``, their candidates, a label),
    the best sum of ``metric`` over the index rows and each of those, equally weighted."""
    if not selection_ids or not candidate_ids:
        raise ConfigError(f"{label}: no selection queries or no candidates outside them")
    selections = [(evaluator.queries_from_index(selection_ids, config.label_column), candidate_ids,
                   f"the {label} rows")] + list(also)
    reported = set(report.query_ids if report.query_ids is not None else ())
    total: dict[str, float] = {}
    for queries, cands, name in selections:
        if set(queries.ids) & reported:
            raise ConfigError("the headline must be chosen on other queries than those reported")
        if not len(queries) or not cands:
            raise ConfigError(f"{name}: no selection queries or no candidates")
        sel = evaluator.run(queries, cands, dataclasses.replace(config, bootstrap=0))
        first = next(iter(sel.measures.values()))
        if metric not in first:
            valid = ", ".join(k for k, v in first.items() if "value" in v)
            raise ConfigError(f"unknown metric {metric!r}; valid: {valid}")
        for m, v in choose_headline(sel, metric)[1].items():
            total[m] = total.get(m, 0.0) + v
    measure = best_measure(total)
    if also:
        parts = " + ".join(f"{name} ({len(q)} queries vs {len(c)} candidates)" for q, c, name in selections)
        rule = f"highest sum of {metric} over {parts}"
    else:
        rule = (f"highest {metric} with the {label} rows as queries against the {len(candidate_ids)} candidates "
                f"outside them ({len(selection_ids)} queries)")
    report.set_headline(measure, metric, rule, total)
