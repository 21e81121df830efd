"""The client's side of sharded fast mode (:mod:`.fast_sharded`): from the shards' answers of each
round, the choices local fast mode makes over all rows (:class:`~dermsearch.search.fast.FastIndex`,
its stages in the same order, on the same values), and the jobs of the next round."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .config import FastConfig
from .engine import Query, largest, top_k_rows
from .fast_parts import FastResult, components_of, style_candidates
from .measures import measure_scores

__all__ = ["Planner", "merged_top", "split_rows"]

Send = Callable[[str, dict], dict]      # (stage, {shard: arguments}) -> {shard: per-query results}


def merged_top(parts: Sequence[tuple[np.ndarray, np.ndarray]], c: int, n_valid: int) -> np.ndarray:
    """The archive's ``c`` rows with the largest values, from each shard's own best (global rows,
    values): every valid row when ``c`` covers them, else ties at the cut to the lowest rows (as
    fast mode's choice over all rows, :func:`~dermsearch.search.engine.largest`)."""
    rows = np.concatenate([r for r, _ in parts]) if parts else np.zeros(0, np.int64)
    values = np.concatenate([v for _, v in parts]) if parts else np.zeros(0)
    order = np.argsort(rows, kind="stable")
    rows, values = rows[order], values[order]
    return rows if c >= n_valid else rows[largest(values, c)]


def split_rows(rows: np.ndarray, ranges: Sequence[tuple[int, int]]) -> dict[int, np.ndarray]:
    """Sorted global rows by the shard (its number) whose range holds them."""
    return {i: rows[np.searchsorted(rows, a):np.searchsorted(rows, b)] for i, (a, b) in enumerate(ranges)}


def pack_valid(valid: np.ndarray):
    """A shard's candidate flags for the wire: None when all are candidates, else one bit a row."""
    return None if valid.all() else np.packbits(valid)


@dataclass
class _Query:
    """One query on the client through the rounds."""

    j: int
    query: Query
    valid: np.ndarray                        # [N] its candidates
    n_valid: int
    live: list[int]                          # the shards holding some of its candidates
    top_f: float = 0.0
    top_s: float | None = None
    check_parts: dict = field(default_factory=dict)
    check: dict = field(default_factory=dict)
    wide: dict = field(default_factory=dict)
    rerank: np.ndarray | None = None
    raw: dict = field(default_factory=dict)
    style_rows: np.ndarray | None = None
    found: dict = field(default_factory=dict)
    unchecked: dict = field(default_factory=dict)     # comp -> shard -> (rows, upper bounds, largest)

    @property
    def style(self) -> bool:
        return self.query.style is not None


class Planner:
    """One batch of queries over the shards ``ranges`` ([start, stop) each, in order)."""

    def __init__(self, ranges: Sequence[tuple[int, int]], config: FastConfig, queries: Sequence[Query],
                 valid: np.ndarray, measures: tuple[str, ...], k: int, rounds: int):
        self.ranges, self.config, self.queries = list(ranges), config, list(queries)
        self.valid, self.measures, self.k, self.rounds = valid, measures, k, rounds

    def run(self, send: Send) -> list[FastResult]:
        """Every query's result; ``send`` runs one stage on the shards (see :mod:`.fast_sharded`)."""
        one = send("one", {i: (self.queries, [pack_valid(self.valid[j, a:b]) for j in range(len(self.queries))],
                               self.k, self.measures) for i, (a, b) in enumerate(self.ranges)})
        qs = [self._first(j, {i: one[i][j] for i in one if one[i][j] is not None}) for j in range(len(self.queries))]
        live = [q for q in qs if q is not None]
        jobs = self._jobs(live, lambda q, i: (q.top_f, q.top_s))
        two = send("two", {i: (per_query,) for i, per_query in jobs.items()}) if jobs else {}
        for q in live:
            self._second(q, {i: two[i][q.j] for i in q.live})
        parts = self.split(live)
        jobs = self._jobs(live, lambda q, i: (None if q.style_rows is None else parts[q.j]["style"][i],
                                              parts[q.j]["rerank"][i]))
        three = send("three", {i: (per_query,) for i, per_query in jobs.items()}) if jobs else {}
        for q in live:
            self._third(q, {i: three[i][q.j] for i in q.live})
        self._normaliser_rounds(live, send)
        results = [self._empty() if q is None else self._scored(q) for q in qs]
        self._fill_style(live, results, send)
        return results

    def _jobs(self, live: list[_Query], job) -> dict[int, list]:
        """Per shard with some query's candidates: one argument per query (None where it has none)."""
        out: dict[int, list] = {}
        for q in live:
            for i in q.live:
                out.setdefault(i, [None] * len(self.queries))[q.j] = job(q, i)
        return out

    def split(self, live: list[_Query]) -> dict[int, dict[str, dict[int, np.ndarray]]]:
        return {q.j: {"rerank": split_rows(q.rerank, self.ranges),
                      "style": None if q.style_rows is None else split_rows(q.style_rows, self.ranges)} for q in live}

    # ------------------------------------------------------------------- the rounds' answers
    def _first(self, j: int, parts: dict[int, dict]) -> _Query | None:
        """Round one: the maxima of the estimates over all valid rows; the normaliser candidates'
        lists (nothing to rank: None, as local fast mode's empty result)."""
        n_valid = int(self.valid[j].sum())
        if not parts or not n_valid or not self.measures:
            return None
        q = _Query(j, self.queries[j], self.valid[j], n_valid, sorted(parts))
        q.top_f = max(p["top_f"] for p in parts.values())
        if q.style:
            q.top_s = max(p["top_s"] for p in parts.values())
        q.check_parts = {c: [parts[i]["check"][c] for i in q.live] for c in parts[q.live[0]]["check"]}
        return q

    def _second(self, q: _Query, parts: dict[int, dict]) -> None:
        """Round two: stage A's rows and the normaliser candidates over all rows, their exact
        feature and mask components, and stage B's choice of exact style rows."""
        cfg = self.config
        per_measure = max(cfg.wide_candidates, cfg.wide_rows // len(self.measures), self.k)
        q.wide = {m: merged_top([parts[i]["wide"][m] for i in q.live], per_measure, q.n_valid) for m in self.measures}
        q.check = {c: merged_top(p, cfg.normaliser_candidates, q.n_valid) for c, p in q.check_parts.items()}
        q.rerank = np.unique(np.concatenate(list(q.wide.values()) + list(q.check.values())))
        rows = np.concatenate([parts[i]["rows"] for i in q.live])
        at = np.searchsorted(rows, q.rerank)
        if at.size and (at.max() >= rows.size or not np.array_equal(rows[at], q.rerank)):
            raise RuntimeError("sharded fast mode: a chosen row is missing from its shard's answer")
        first = parts[q.live[0]]
        q.raw = {c: np.concatenate([parts[i]["raw"][c] for i in q.live])[at] for c in first["raw"]}
        if q.style:
            style_est = np.concatenate([parts[i]["style_est"] for i in q.live])[at]
            q.style_rows = np.unique(np.concatenate(self._style_candidates(q, style_est) + [q.check["style"]]))

    def _style_candidates(self, q: _Query, style_est: np.ndarray) -> list[np.ndarray]:
        """Stage B (:func:`~.fast_parts.style_candidates`) on the rows re-ranked."""
        return style_candidates(q.raw, q.rerank, q.valid, self.measures, q.wide, style_est, q.top_f,
                                self.config.candidates, self.k)

    def _third(self, q: _Query, parts: dict[int, dict]) -> None:
        """Round three: the exact style losses read, each normaliser's largest exact value so far
        and the shards' largest unchecked upper bounds."""
        if q.style:
            q.raw["style"] = np.full(q.rerank.size, np.nan)
            q.raw["style"][np.searchsorted(q.rerank, q.style_rows)] = np.concatenate(
                [parts[i]["style"] for i in q.live])
        in_valid = q.valid[q.rerank]
        for comp in q.check:
            vals = q.raw["style"] if comp == "style" else q.raw["euclidean"] ** 2     # squared, like the bounds
            q.found[comp] = float(np.nanmax(np.where(in_valid, vals, np.nan)))
            q.unchecked[comp] = {i: parts[i]["unchecked"][comp] for i in q.live}

    def _normaliser_rounds(self, live: list[_Query], send: Send) -> None:
        """Rows whose upper bound still exceeds a normaliser's largest exact value are measured,
        the largest bounds first (ties by row), up to ``rounds`` rounds, as local fast mode does."""
        by_j = {q.j: q for q in live}
        for _ in range(self.rounds):
            jobs = self._more_jobs(live)
            if not jobs:
                return
            answers = send("more", {i: (per_query,) for i, per_query in jobs.items()})
            for i, per_query in answers.items():
                for j, r in enumerate(per_query):
                    if r is None:
                        continue
                    q = by_j[j]
                    for comp, v in r["values"].items():
                        if v.size:
                            q.found[comp] = max(q.found[comp], float(v.max()))
                    for comp, u in r["unchecked"].items():
                        q.unchecked[comp][i] = u

    def _more_jobs(self, live: list[_Query]) -> dict[int, list]:
        """Per shard, per query: the rows each normaliser round measures ({component: rows})."""
        c = self.config.normaliser_candidates
        jobs: dict[int, list] = {}
        for q in live:
            for comp, per_shard in q.unchecked.items():
                rows = np.concatenate([u[0] for u in per_shard.values()])
                bounds = np.concatenate([u[1] for u in per_shard.values()])
                order = np.argsort(rows, kind="stable")
                rows, bounds = rows[order], bounds[order]
                over = np.flatnonzero(bounds > q.found[comp])
                if not over.size:
                    continue
                more = np.sort(rows[over][top_k_rows(bounds[over], np.ones(over.size, dtype=bool), c)[0]])
                for i, part in split_rows(more, self.ranges).items():
                    if part.size:
                        per_query = jobs.setdefault(i, [None] * len(self.queries))
                        per_query[q.j] = {**(per_query[q.j] or {}), comp: part}
        return jobs

    # ------------------------------------------------------------------------- the results
    def _empty(self) -> FastResult:
        empty = np.zeros(0, dtype=np.int64)
        return FastResult({m: empty for m in self.measures}, {m: np.zeros(0) for m in self.measures}, {}, {}, empty, {})

    def _scored(self, q: _Query) -> FastResult:
        """The normalisers (certified or bounded) and the re-ranked rows' exact scores."""
        normalisers, bounds, certified = {}, {}, {}
        for comp, found in q.found.items():
            hi = max(found, max(u[2] for u in q.unchecked[comp].values()))
            root = (lambda v: v) if comp == "style" else np.sqrt
            normalisers[comp], bounds[comp], certified[comp] = (float(root(found)),
                                                                (float(root(found)), float(root(hi))), hi <= found)
        comp = components_of(q.raw, normalisers)
        scores = measure_scores(comp, self.measures)
        rows_out, scores_out = {}, {}
        in_valid = q.valid[q.rerank]
        for m in self.measures:
            order = top_k_rows(scores[m], in_valid & ~np.isnan(scores[m]), self.k)[0]   # rerank is sorted: ties by row
            rows_out[m], scores_out[m] = q.rerank[order], scores[m][order]
        return FastResult(rows_out, scores_out, comp, q.raw, q.rerank, normalisers, bounds, certified)

    def _fill_style(self, live: list[_Query], results: list[FastResult], send: Send) -> None:
        """Every hit reports all four components: the style of returned rows not read yet (one
        more round, only when some are missing)."""
        missing = {}
        for q in live:
            if q.style:
                r = results[q.j]
                hits = np.unique(np.concatenate(list(r.rows.values())))
                gone = hits[np.isnan(r.raw["style"][np.searchsorted(r.reranked, hits)])]
                if gone.size:
                    missing[q.j] = gone
        if not missing:
            return
        jobs: dict[int, list] = {}
        for j, rows in missing.items():
            for i, part in split_rows(rows, self.ranges).items():
                if part.size:
                    jobs.setdefault(i, [None] * len(self.queries))[j] = part
        answers = send("style", {i: (per_query,) for i, per_query in jobs.items()})
        for j, rows in missing.items():
            r = results[j]
            values = np.concatenate([answers[i][j] for i in sorted(answers) if answers[i][j] is not None])
            r.raw["style"][np.searchsorted(r.reranked, rows)] = values
            r.components["style"] = components_of({"style": r.raw["style"]}, r.normalisers)["style"]
