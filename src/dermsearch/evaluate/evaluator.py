"""Leakage-free, label-based retrieval evaluation of the ten measures (API: :class:`Evaluator`).

For every query, every candidate is ranked by each measure, exactly as :class:`Searcher` does
(same normalisation over the query's own candidate set, same tie order), but for batches of
queries at once with matrix-matrix products. The query itself and every image of the same
lesion (``lesion_id``) are never candidates; nor, with ``exclude_same="patient"`` (the default
when the index stores patients), any image of the query's patient (:mod:`.exclusion`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import ConfigError, NotFoundError
from ..extract import ImageError, Vectors, load_image
from ..index.sources import Problem, read_labels_csv
from ..index.store import ModelMismatchError
from ..labels import read_split
from ..models.metadata_head import read_metadata
from ..names import BACKBONE_INITS
from ..search import MEASURES, Searcher
from .config import EvaluationConfig
from .exclusion import check, exclusion_note, labels_of, meta_column, patients_of, strictest
from .headline import best_measure, choose_headline, choose_on, split_selection
from .metrics import (
    average_precision_at_k,
    balanced_accuracy,
    bootstrap_ci,
    knn_majority,
    lesion_clusters,
    macro_mean,
    precision_at_k,
    vote_auc,
)

__all__ = ["EvaluationConfig", "EvaluationReport", "Evaluator", "QuerySet", "QueryOutcomes", "read_split",
           "choose_headline", "best_measure", "is_unknown_diagnosis", "query_clusters", "head_clusters", "first_line"]


@dataclass
class QuerySet:
    """Queries with their vectors and labels (from index rows or from external images)."""

    ids: np.ndarray
    diagnosis: np.ndarray        # str ("" when unknown)
    melanoma: np.ndarray         # float, nan when unknown
    lesion_id: np.ndarray        # object (None when unknown)
    features: np.ndarray
    styles: np.ndarray | None
    masks: np.ndarray | None     # packed
    mask_areas: np.ndarray | None
    paths: np.ndarray | None = None
    source: str = "index"
    patient_id: np.ndarray | None = None   # object ("" when unknown)
    meta: np.ndarray | None = None         # object: each query's stored columns (dict), for a metadata head

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def vectors(self) -> Vectors:
        return Vectors(self.features, self.styles, self.masks, self.mask_areas)


@dataclass
class EvaluationReport:
    config: EvaluationConfig
    queries: int
    candidates: int
    source: str
    seconds: float
    ranking_seconds: float
    measures: dict[str, dict]                      # measure -> metric -> {value, ci}
    neighbours: dict[str, np.ndarray] = field(repr=False, default_factory=dict)  # measure -> [Q, K] ids
    query_ids: np.ndarray | None = field(repr=False, default=None)
    query_paths: np.ndarray | None = field(repr=False, default=None)
    notes: list[str] = field(default_factory=list)
    head: dict | None = None                       # the ensemble head's melanoma AUC, when it has one
    headline: dict | None = None                   # the measure named in advance (see choose_headline)

    def to_json(self) -> dict:
        return {"config": asdict(self.config), "queries": self.queries, "candidates": self.candidates,
                "source": self.source, "seconds": round(self.seconds, 2),
                "ranking_seconds": round(self.ranking_seconds, 2), "measures": self.measures,
                "head": self.head, "headline": self.headline, "notes": self.notes}

    def set_headline(self, measure: str, metric: str, rule: str, selection: dict[str, float] | None = None) -> None:
        """Name the measure this report headlines, by a rule fixed before looking at these queries."""
        if measure not in self.measures:
            raise ConfigError(f"headline measure {measure!r} is not in this report ({', '.join(self.measures)})")
        if metric not in self.measures[measure]:
            raise ConfigError(f"unknown metric {metric!r}; valid: "
                             f"{', '.join(k for k, v in self.measures[measure].items() if 'value' in v)}")
        self.headline = {"measure": measure, "metric": metric, "rule": rule, "selection": selection,
                         **self.measures[measure][metric]}


def is_unknown_diagnosis(diagnosis: str | None) -> bool:
    """True for a row whose diagnosis is "unknown" (isic-uda1 has two, marked melanoma=0): its
    melanoma status is not known either, so melanoma figures leave it out."""
    return (diagnosis or "").strip().lower() == "unknown"


def _label(diagnosis: str | None) -> str:
    """A query's diagnosis label; "unknown" counts as unlabelled."""
    return "" if is_unknown_diagnosis(diagnosis) else (diagnosis or "").strip()


@dataclass
class QueryOutcomes:
    """What each query got from one measure: ``precision`` (P@k), ``average_precision`` and
    ``predicted`` (the k-NN majority diagnosis) for the labelled queries (with their ``groups`` =
    diagnoses), ``melanoma_precision`` and ``votes`` (fraction of melanomas among the vote_k
    neighbours) for the queries whose melanoma status (``melanoma``) is known."""

    groups: np.ndarray
    precision: np.ndarray
    average_precision: np.ndarray
    melanoma_precision: np.ndarray
    predicted: np.ndarray
    melanoma: np.ndarray
    votes: np.ndarray


# Why an index's own model may not load although its stored vectors are fine: it was built with an
# earlier release's packaged model (see the MODEL_CARD's "Existing indexes").
HEAD_UNAVAILABLE = (ModelMismatchError, ConfigError)


def first_line(error: BaseException) -> str:
    """An exception's first line of text (its class name when it has none)."""
    return (str(error).splitlines() or [type(error).__name__])[0]


def query_clusters(queries: QuerySet, config: EvaluationConfig) -> np.ndarray | None:
    """The bootstrap's unit per query: its lesion (``ci_unit="lesion"``) or None (images)."""
    if config.ci_unit not in ("lesion", "image"):
        raise ConfigError(f"ci_unit must be 'lesion' or 'image', not {config.ci_unit!r}")
    return lesion_clusters(queries.lesion_id) if config.ci_unit == "lesion" else None


def head_clusters(queries: QuerySet, config: EvaluationConfig) -> np.ndarray | None:
    """The bootstrap's unit for a head AUC: the lesions of the queries whose melanoma status is known."""
    known = ~np.isnan(queries.melanoma)
    return lesion_clusters(queries.lesion_id[known]) if config.ci_unit == "lesion" else None


def _meta_dict(text) -> dict:
    """A row's stored columns (its ``meta`` JSON) as a dict; {} when absent or unreadable."""
    try:
        d = json.loads(text) if text else {}
    except (TypeError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def _object_array(items: list) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _stat(value: float, ci: tuple[float, float]) -> dict:
    return {"value": value, "ci95": [ci[0], ci[1]]}


def _mean_stat(values: np.ndarray, rounds: int, seed: int, clusters: np.ndarray | None = None) -> dict:
    mean = float(values.mean()) if values.size else float("nan")
    return _stat(mean, bootstrap_ci(lambda i: values[i].mean(), len(values), rounds, seed, clusters=clusters))


def _macro_at(values: np.ndarray, groups: np.ndarray, idx: np.ndarray) -> float:
    return macro_mean(values[idx], groups[idx])


def _bacc_at(true: np.ndarray, predicted: np.ndarray, idx: np.ndarray) -> float:
    return balanced_accuracy(true[idx], predicted[idx])


def _auc_at(y: np.ndarray, votes: np.ndarray, idx: np.ndarray) -> float:
    return vote_auc(y[idx], votes[idx])


class Evaluator:
    """Evaluate an index's ten measures against its labels."""

    def __init__(self, searcher: Searcher | str | Path):
        self.searcher = searcher if isinstance(searcher, Searcher) else Searcher(searcher)

    # ---------------------------------------------------------------- queries
    def queries_from_index(self, ids=None, label_column: str | None = None) -> QuerySet:
        """Index rows as queries (all, or ``ids``); labelled by ``label_column`` when given."""
        s = self.searcher.snapshot
        rows = np.arange(len(s)) if ids is None else np.array([self._row(i) for i in ids], dtype=np.int64)
        mel = np.where([is_unknown_diagnosis(d) for d in s.diagnosis[rows]], np.nan, s.melanoma[rows])
        labels = labels_of(self.searcher, label_column)[rows]
        return QuerySet(s.ids[rows], np.array([_label(d) for d in labels], dtype=object),
                        mel, s.lesion_id[rows], *self.searcher.engine.take(rows).arrays(), s.paths[rows], "index",
                        patients_of(self.searcher)[rows], _object_array([_meta_dict(m) for m in s.meta_json[rows]]))

    def _row(self, image_id: str) -> int:
        pos = self.searcher.row(image_id)
        if pos is None:
            raise NotFoundError(f"query id {image_id!r} is not in the index")
        return pos

    def queries_from_csv(self, labels_csv: str | Path, diagnosis_map: dict[str, str] | None = None,
                         on_problem: Callable[[Problem], None] | None = None,
                         progress: Callable[[int, int], None] | None = None, only_ids=None,
                         label_column: str | None = None) -> QuerySet:
        """External labelled images (a labels CSV in any layout the index reads), extracted with the
        index's own model; only the rows whose id is in ``only_ids`` (e.g. one split), when given."""
        records, problems = read_labels_csv(Path(labels_csv))
        if only_ids is not None:
            records = [r for r in records if r.id in only_ids]
        if label_column and records and not any((r.meta.get(label_column) or "").strip() for r in records):
            raise ConfigError(f"{labels_csv}: no query has a value in column {label_column!r}")
        extractor = self.searcher.extractor
        parts, kept = [], []
        for start in range(0, len(records), 16):
            batch, images = [], []
            for r in records[start:start + 16]:
                try:
                    images.append(load_image(r.path))
                    batch.append(r)
                except ImageError as e:
                    problems.append(Problem(r.path, str(e)))
            if images:
                parts.append(extractor.extract(images))
                kept.extend(batch)
            if progress:
                progress(min(start + 16, len(records)), len(records))
        for p in problems:
            if on_problem:
                on_problem(p)
        if not kept:
            raise ConfigError(f"{labels_csv}: no usable query images")
        ex = Vectors.concat(parts)
        dmap = diagnosis_map or {}
        raw = [(r.meta.get(label_column) or "").strip() if label_column else (r.diagnosis or "") for r in kept]
        diag = np.array([_label(dmap.get(d, d)) for d in raw], dtype=object)
        # a query whose diagnosis is "unknown" has no known melanoma status either (isic-uda1 marks
        # its two unknown rows melanoma=0): leave it out of the melanoma metrics too
        mel = np.array([np.nan if r.melanoma is None or is_unknown_diagnosis(r.diagnosis) else float(r.melanoma)
                        for r in kept])
        return QuerySet(np.array([r.id for r in kept], dtype=object), diag, mel,
                        np.array([r.lesion_id for r in kept], dtype=object), ex.features, ex.styles, ex.masks,
                        ex.mask_areas, np.array([r.path for r in kept], dtype=object), str(labels_csv),
                        meta_column([r.meta for r in kept], "patient_id"), _object_array([dict(r.meta) for r in kept]))

    # -------------------------------------------------------------------- run
    def rank(self, queries: QuerySet, candidate_ids=None, config: EvaluationConfig = EvaluationConfig(),
             progress: Callable[[int, int], None] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Top-K candidate rows per query and measure (K = max(k, vote_k)); plus the
        per-query number of same-diagnosis candidates."""
        s = self.searcher.snapshot
        n = len(s)
        allowed = np.ones(n, dtype=bool)
        if candidate_ids is not None:
            allowed[:] = False
            for i in candidate_ids:
                allowed[self._row(i)] = True
        if not allowed.any():
            raise ConfigError("no candidates: the candidate selection is empty (a candidate split no row of the "
                              "split file names?); check the split's name and file")
        measures = self.searcher.available_measures()
        K = max(config.k, config.vote_k)
        engine = self.searcher.engine          # any engine: exact, fast or sharded (Dask)
        cand_diag = labels_of(self.searcher, config.label_column)
        lesions = np.array([lid if lid else f"\0row{i}" for i, lid in enumerate(s.lesion_id)], dtype=object)
        by_patient = check(config.exclude_same or strictest(self.searcher)) == "patient"
        patients = patients_of(self.searcher)
        q_patients = queries.patient_id if queries.patient_id is not None else np.full(len(queries), "", object)
        top = {m: np.full((len(queries), K), -1, dtype=np.int64) for m in measures}   # -1: fewer than K candidates
        n_relevant = np.zeros(len(queries), dtype=np.int64)
        vectors = queries.vectors
        for start in range(0, len(queries), config.batch_size):
            sl = slice(start, min(len(queries), start + config.batch_size))
            b = sl.stop - sl.start
            valid = np.broadcast_to(allowed, (b, n)).copy()
            for j, (qid, qles) in enumerate(zip(queries.ids[sl], queries.lesion_id[sl])):
                pos = self.searcher.row(qid)
                if pos is not None:
                    valid[j, pos] = False
                if config.exclude_same_lesion and qles:
                    valid[j] &= lesions != qles
                if by_patient and q_patients[sl][j]:
                    valid[j] &= patients != q_patients[sl][j]
            for j, ranking in enumerate(engine.rank(vectors.take(sl), valid, measures, K)):
                for m in measures:
                    rows = ranking.measures[m].rows
                    top[m][start + j, :rows.size] = rows
            same = cand_diag[None, :] == queries.diagnosis[sl, None]
            n_relevant[sl] = (same & valid).sum(axis=1)
            if progress:
                progress(sl.stop, len(queries))
        return top, n_relevant

    def outcomes(self, queries: QuerySet, top: dict[str, np.ndarray], n_relevant: np.ndarray,
                 config: EvaluationConfig) -> dict[str, QueryOutcomes]:
        """Per measure, what each query got (from :meth:`rank`'s top rows): the per-query
        figures every metric and CI of :meth:`run` (and a paired comparison) is computed from."""
        s = self.searcher.snapshot
        labelled = queries.diagnosis != ""
        mel_known = ~np.isnan(queries.melanoma)
        # row -1 (a query with fewer than K candidates) is the sentinel at the end: no label, no melanoma
        cand_diag = np.append(labels_of(self.searcher, config.label_column), "").astype(object)
        cand_mel = np.append(s.melanoma, np.nan)
        k = config.k
        out = {}
        for m in MEASURES:
            if m not in top:
                continue
            rows = top[m]
            rel = (cand_diag[rows[:, :k]] == queries.diagnosis[:, None])[labelled]
            votes = np.nan_to_num(cand_mel[rows[:, :config.vote_k]][mel_known], nan=0.0)
            out[m] = QueryOutcomes(
                groups=queries.diagnosis[labelled],
                precision=precision_at_k(rel), average_precision=average_precision_at_k(rel, n_relevant[labelled]),
                melanoma_precision=precision_at_k((cand_mel[rows[:, :k]] == queries.melanoma[:, None])[mel_known]),
                predicted=knn_majority(cand_diag[rows[:, :k]])[labelled],
                melanoma=queries.melanoma[mel_known], votes=votes)
        return out

    def run(self, queries: QuerySet, candidate_ids=None, config: EvaluationConfig = EvaluationConfig(),
            progress: Callable[[int, int], None] | None = None) -> EvaluationReport:
        t0 = time.perf_counter()
        s = self.searcher.snapshot
        if len(queries) and not (queries.diagnosis != "").any() and np.isnan(queries.melanoma).all():
            raise ConfigError(f"none of the {len(queries)} queries has a diagnosis or a melanoma status: "
                              "evaluation needs labelled images (index a labels CSV, or name the label column)")
        by_default = config.exclude_same is None
        config = dataclasses.replace(config, exclude_same=check(config.exclude_same or strictest(self.searcher)))
        top, n_relevant = self.rank(queries, candidate_ids, config, progress)
        ranking_seconds = time.perf_counter() - t0
        with_patient = 0 if queries.patient_id is None else int(queries.patient_id.astype(bool).sum())
        notes = [exclusion_note(config.exclude_same, by_default, with_patient, len(queries))]
        if config.label_column:
            notes.append(f"relevance: same value in column {config.label_column!r} (not the diagnosis)")
        try:
            p_head = self.head_probabilities(queries)
        except HEAD_UNAVAILABLE as e:       # the stored vectors still rank; only the head needs the model
            p_head = None
            notes.append(f"no head AUC: the index's model cannot be loaded ({first_line(e)})")
        else:
            if p_head is None:
                notes.append("the index's model has no trained classification head (pretrained pooled features "
                             "or an untrained ensemble), so no head AUC is reported")
        head = None if p_head is None else self._head_auc(queries, p_head, config)
        if config.metadata_head:
            head = self._metadata_head_auc(queries, p_head, config, head, notes)
        labelled = queries.diagnosis != ""
        if not labelled.all():
            notes.append(f"{int((~labelled).sum())} queries without a diagnosis are left out of the diagnosis metrics")
        k, rounds, seed = config.k, config.bootstrap, config.seed
        clusters = query_clusters(queries, config)
        cl_lab = None if clusters is None else clusters[labelled]
        cl_mel = None if clusters is None else clusters[~np.isnan(queries.melanoma)]
        results: dict[str, dict] = {}
        for m, o in self.outcomes(queries, top, n_relevant, config).items():
            sd = seed + 1000 * MEASURES.index(m)
            p, groups = o.precision, o.groups
            per_diag = {}
            for g in sorted(set(groups.tolist())):
                per_diag[g] = _mean_stat(p[groups == g], rounds, sd, None if cl_lab is None else cl_lab[groups == g])
            results[m] = {
                f"p@{k}": _mean_stat(p, rounds, sd, cl_lab),
                f"macro_p@{k}": _stat(macro_mean(p, groups),
                                      bootstrap_ci(partial(_macro_at, p, groups), len(p), rounds, sd, clusters=cl_lab)),
                f"melanoma_p@{k}": _mean_stat(o.melanoma_precision, rounds, sd, cl_mel),
                f"map@{k}": _mean_stat(o.average_precision, rounds, sd, cl_lab),
                f"knn{k}_balanced_accuracy": _stat(
                    balanced_accuracy(groups, o.predicted),
                    bootstrap_ci(partial(_bacc_at, groups, o.predicted), len(groups), rounds, sd, clusters=cl_lab)),
                f"melanoma_auc_vote{config.vote_k}": _stat(
                    vote_auc(o.melanoma, o.votes),
                    bootstrap_ci(partial(_auc_at, o.melanoma, o.votes), len(o.melanoma), rounds, sd, clusters=cl_mel)),
                f"per_diagnosis_p@{k}": per_diag,
            }
        n_cand = len(s) if candidate_ids is None else len(set(candidate_ids))
        ids = np.append(s.ids.astype(object), None)
        ids_top = {m: ids[rows] for m, rows in top.items()}
        return EvaluationReport(config, len(queries), n_cand, queries.source, time.perf_counter() - t0,
                                ranking_seconds, results, ids_top, queries.ids, queries.paths, notes, head)

    def headline_from(self, report: EvaluationReport, selection_ids, candidate_ids, metric: str,
                      config: EvaluationConfig, label: str, also: list[tuple[QuerySet, list, str]] = ()) -> None:
        """Name ``report``'s headline measure by a rule fixed in advance (:func:`.headline.choose_on`)."""
        choose_on(self, report, selection_ids, candidate_ids, metric, config, label, also)

    def headline_on_splits(self, report: EvaluationReport, split: dict, names, candidate_ids, metric: str,
                           config: EvaluationConfig, also: list[tuple[QuerySet, list, str]] = ()) -> None:
        """:meth:`headline_from` with the index rows of the splits ``names`` as selection queries
        (``metric``'s ``@k`` read as ``config.k``)."""
        chosen, pool = split_selection(self.searcher.snapshot.ids, split, names, candidate_ids)
        self.headline_from(report, chosen, pool, metric.replace("@k", f"@{config.k}"), config, "+".join(names), also)

    def head_probabilities(self, queries: QuerySet) -> np.ndarray | None:
        """P(melanoma) of the index model's own head for each query (None: the model has no head)."""
        cfg = self.searcher.index.extractor_config
        if cfg.feature != "ensemble" or cfg.weights in BACKBONE_INITS:
            return None
        extractor = self.searcher.extractor
        if not extractor.has_head:
            return None
        return np.asarray(extractor.melanoma_probability(queries.features), dtype=np.float64)

    def _metadata_head_auc(self, queries: QuerySet, p_head: np.ndarray | None, config: EvaluationConfig,
                           head: dict | None, notes: list[str]) -> dict | None:
        """``head`` plus the AUC of ``config.metadata_head`` (image head + age, sex, site) on the same queries."""
        from ..models.metadata_head import MetadataHead

        mh = MetadataHead.load(config.metadata_head)
        mh.check_model(self.searcher.index.fingerprint, config.metadata_head)
        if p_head is None:
            notes.append("no metadata head AUC: it reads the image head's probability, which this index's model "
                         "cannot give")
            return head
        metas = queries.meta if queries.meta is not None else [None] * len(queries)
        p_meta = mh.probability(p_head, list(metas))
        out = dict(head or {})
        out.update(self._head_auc(queries, p_meta, config, "melanoma_auc_head_metadata"))
        with_any = sum(any(v is not None for v in read_metadata(m)) for m in metas)
        out["metadata_head"] = {"fingerprint": mh.fingerprint, "path": str(config.metadata_head),
                                "queries_with_metadata": int(with_any)}
        return out

    def _head_auc(self, queries: QuerySet, p_all: np.ndarray, config: EvaluationConfig,
                  key: str = "melanoma_auc_head") -> dict:
        """Melanoma AUC of the ensemble's own head (``p_all``: :meth:`head_probabilities`), with a CI."""
        known = ~np.isnan(queries.melanoma)
        y = queries.melanoma[known]
        p = p_all[known][:, None]
        return {key: _stat(vote_auc(y, p), bootstrap_ci(partial(_auc_at, y, p), len(y),
                                                                            config.bootstrap, config.seed,
                                                                            clusters=head_clusters(queries, config)))}
