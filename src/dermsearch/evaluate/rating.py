"""The paper's human protocol, blinded: a rating sheet of each query's top-k images (all
measures pooled, shuffled, measure names hidden) and the success rate per measure from a
person's judgements (paper section 4.1: each of the top k counts 1/k when judged similar)."""

from __future__ import annotations

import csv
import json
from functools import cache, partial
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..extract.images import thumbnail_data_uri
from ..io import write_text
from ..templating import package_env
from .evaluator import EvaluationReport
from .metrics import bootstrap_ci

__all__ = ["write_rating_sheet", "score_ratings"]


@cache
def _env():
    """The rating sheet's template (``evaluate/templates``), autoescaped: a query id is text, never markup."""
    return package_env("evaluate/templates")


def write_rating_sheet(report: EvaluationReport, paths_by_id: dict[str, str], out: str | Path,
                       n_queries: int = 50, seed: int = 0) -> list[Path]:
    """Write ``sheet.html`` and ``sheet.csv`` (for the rater) and ``key.csv`` (kept from the rater)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    k = report.config.k
    n = len(report.query_ids)
    chosen = np.sort(rng.choice(n, size=min(n_queries, n), replace=False))
    key_rows, sheet_rows, blocks = [], [], []
    for qn, qi in enumerate(chosen, start=1):
        qid = str(report.query_ids[qi])
        pooled: dict[str, list[tuple[str, int]]] = {}
        for m, ids in report.neighbours.items():
            for rank, cid in enumerate(ids[qi, :k], start=1):
                pooled.setdefault(str(cid), []).append((m, rank))
        cands = list(pooled)
        rng.shuffle(cands)
        items = []
        for j, cid in enumerate(cands):
            item = f"Q{qn:03d}-{j + 1:02d}"
            for m, rank in pooled[cid]:
                key_rows.append([qid, item, cid, m, rank])
            sheet_rows.append([qid, item, ""])
            items.append((item, cid))
        qpath = report.query_paths[qi] if report.query_paths is not None else paths_by_id.get(qid)
        blocks.append({"n": qn, "id": qid, "uri": thumbnail_data_uri(qpath or ""),
                       "cards": [(item, thumbnail_data_uri(paths_by_id.get(cid, ""))) for item, cid in items]})
    with open(out / "key.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["query_id", "item", "candidate_id", "measure", "rank"])
        w.writerows(key_rows)
    with open(out / "sheet.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["query_id", "item", "similar"])
        w.writerows(sheet_rows)
    page = _env().get_template("rating_sheet.html").render(queries=blocks, k=k)
    write_text(out / "sheet.html", page)
    (out / "sheet.json").write_text(json.dumps({"k": k, "queries": len(chosen), "seed": seed}))
    return [out / "sheet.html", out / "sheet.csv", out / "key.csv"]


def _mean_at(values: np.ndarray, idx: np.ndarray) -> float:
    return float(values[idx].mean())


def score_ratings(key_csv: str | Path, ratings_csv: str | Path, bootstrap: int = 1000, seed: int = 0) -> dict:
    """Success rate per measure: mean over rated (query, session) pairs of (similar images in its top k) / k."""
    with open(key_csv, newline="") as f:
        reader = csv.DictReader(f)
        wanted = ("query_id", "item", "candidate_id", "measure", "rank")
        if not reader.fieldnames or not set(wanted) <= set(reader.fieldnames):
            raise ConfigError(f"{key_csv}: a rating key needs columns {', '.join(wanted)} (the key.csv written "
                              "beside the rating sheet)")
        key = list(reader)
    with open(ratings_csv, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"query_id", "item", "similar"} <= set(reader.fieldnames):
            raise ConfigError(f"{ratings_csv}: needs columns query_id, item, similar")
        ratings = {}
        for r in reader:
            v = (r["similar"] or "").strip().lower()
            if v not in ("0", "1", "yes", "no", "true", "false", "y", "n"):
                continue
            ratings[(r["query_id"], r["item"])] = v in ("1", "yes", "true", "y")
    missing = sorted({(r["query_id"], r["item"]) for r in key} - set(ratings))
    if missing:
        raise ConfigError(f"{ratings_csv}: {len(missing)} item(s) not rated (0 or 1), e.g. "
                         + ", ".join(f"{q}/{i}" for q, i in missing[:5]))
    k = max(int(r["rank"]) for r in key)
    # one unit per query *and* rating session (web items are "SESSION/ITEM"): a query rated in two
    # sessions is two judgements, each of at most k similar images
    per: dict[str, dict[tuple[str, str], list[bool]]] = {}
    for r in key:
        unit = (r["query_id"], r["item"].rsplit("/", 1)[0] if "/" in r["item"] else "")
        per.setdefault(r["measure"], {}).setdefault(unit, []).append(ratings[(r["query_id"], r["item"])])
    out = {}
    for mi, (m, by_query) in enumerate(per.items()):
        rates = np.array([sum(v) / k for v in by_query.values()])
        out[m] = {"success_rate": float(rates.mean()), "queries": len(rates),
                  "ci95": list(bootstrap_ci(partial(_mean_at, rates), len(rates), bootstrap, seed + mi))}
    return out
