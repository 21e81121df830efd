"""Evaluation outputs: JSON, a markdown table in the layout of the paper's Table 1, PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..errors import require
from .evaluator import EvaluationReport

__all__ = ["to_markdown", "write_report"]

_NAMES = {
    "euclidean": "Euclidean Score", "cosine": "Cosine Similarity", "style": "Style Score", "dice": "Dice Coefficient",
    "i1_ed": "I1_ED", "i1_cd": "I1_CD", "i1_ecd": "I1_ECD", "i1_se": "I1_SE", "i1_sc": "I1_SC", "i1_sd": "I1_SD",
}


def _pct(stat: dict) -> str:
    v, (lo, hi) = stat["value"], stat["ci95"]
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{100 * v:.1f}% ({100 * lo:.1f}-{100 * hi:.1f})"


def to_markdown(report: EvaluationReport) -> str:
    k, vk = report.config.k, report.config.vote_k
    cols = [f"p@{k}", f"macro_p@{k}", f"melanoma_p@{k}", f"map@{k}", f"melanoma_auc_vote{vk}"]
    heads = [f"P@{k}", f"macro-P@{k}", f"melanoma P@{k}", f"mAP@{k}", f"melanoma AUC ({vk}-NN vote)"]
    lines = []
    if report.headline:
        h = report.headline
        lines += [f"**Headline: `{h['measure']}`, {h['metric']} {h['value']:.3f} "
                  f"({h['ci95'][0]:.3f}-{h['ci95'][1]:.3f})**; chosen by a rule fixed in advance: {h['rule']}.", ""]
    cols.insert(4, f"knn{k}_balanced_accuracy")
    heads.insert(4, f"{k}-NN balanced accuracy")
    lines += [f"| Similarity Measure | {' | '.join(heads)} |", "|---" * (len(cols) + 1) + "|"]
    for m, stats in report.measures.items():
        cells = ["n/a" if c not in stats else _pct(stats[c]) if "auc" not in c else
                 ("n/a" if math.isnan(stats[c]["value"]) else
                  f"{stats[c]['value']:.3f} ({stats[c]['ci95'][0]:.3f}-{stats[c]['ci95'][1]:.3f})") for c in cols]
        lines.append(f"| {_NAMES[m]} (`{m}`) | {' | '.join(cells)} |")
    lines.append("")
    lines.append(f"{report.queries} queries, {report.candidates} candidates, 95% bootstrap CIs "
                 f"({report.config.bootstrap} resamples of the query "
                 f"{'lesions, each with all its images' if report.config.ci_unit == 'lesion' else 'images'}); "
                 f"the query and images of the same "
                 f"{'lesion or patient' if report.config.exclude_same == 'patient' else 'lesion'} "
                 f"are never candidates.")
    diags = sorted({d for s in report.measures.values() for d in s[f"per_diagnosis_p@{k}"]})
    if diags:
        lines += ["", f"Per-diagnosis P@{k}:", "", f"| Measure | {' | '.join(diags)} |",
                  "|---" * (len(diags) + 1) + "|"]
        for m, stats in report.measures.items():
            per = stats[f"per_diagnosis_p@{k}"]
            lines.append(f"| `{m}` | " + " | ".join(f"{100 * per[d]['value']:.1f}%" if d in per else "-"
                                                   for d in diags) + " |")
    if report.head and "melanoma_auc_head" in report.head:
        h = report.head["melanoma_auc_head"]
        lines += ["", f"Melanoma AUC of the ensemble's own classification head on the same queries: "
                      f"{h['value']:.3f} ({h['ci95'][0]:.3f}-{h['ci95'][1]:.3f})."]
    if report.head and "melanoma_auc_head_metadata" in report.head:
        h, mh = report.head["melanoma_auc_head_metadata"], report.head["metadata_head"]
        lines += ["", f"Melanoma AUC of the metadata head {mh['fingerprint']} (the image head with age, sex and site; "
                      f"{mh['queries_with_metadata']} queries have some): "
                      f"{h['value']:.3f} ({h['ci95'][0]:.3f}-{h['ci95'][1]:.3f})."]
    for note in report.notes:
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


def _plots(report: EvaluationReport, out: Path) -> list[Path]:
    matplotlib = require("matplotlib", "plots", "drawing the evaluation plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k, vk = report.config.k, report.config.vote_k
    measures = list(report.measures)
    written = []
    metrics = [(f"p@{k}", f"P@{k}"), (f"macro_p@{k}", f"macro-P@{k}"), (f"map@{k}", f"mAP@{k}"),
               (f"melanoma_auc_vote{vk}", f"melanoma AUC ({vk}-NN vote)")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 4.2), constrained_layout=True)
    for ax, (key, title) in zip(axes, metrics):
        vals = np.array([report.measures[m][key]["value"] for m in measures], dtype=float)
        lo = np.array([report.measures[m][key]["ci95"][0] for m in measures], dtype=float)
        hi = np.array([report.measures[m][key]["ci95"][1] for m in measures], dtype=float)
        err = np.nan_to_num(np.vstack([vals - lo, hi - vals]), nan=0.0).clip(min=0)
        ax.barh(measures, vals, xerr=err, color="#4a7fb5", ecolor="#222", capsize=3)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{report.queries} queries vs {report.candidates} candidates (95% bootstrap CI)")
    written.append(out / "measures.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    diags = sorted({d for s in report.measures.values() for d in s[f"per_diagnosis_p@{k}"]})
    if diags:
        grid = np.array([[report.measures[m][f"per_diagnosis_p@{k}"].get(d, {"value": np.nan})["value"]
                          for d in diags] for m in measures], dtype=float)
        fig, ax = plt.subplots(figsize=(1.1 * len(diags) + 3, 0.45 * len(measures) + 1.5), constrained_layout=True)
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(diags)), diags, rotation=30)
        ax.set_yticks(range(len(measures)), measures)
        for i in range(len(measures)):
            for j in range(len(diags)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center",
                            color="white" if grid[i, j] < 0.6 else "black", fontsize=8)
        fig.colorbar(im, ax=ax, label=f"P@{k}")
        ax.set_title(f"P@{k} per query diagnosis")
        written.append(out / "per_diagnosis.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def write_report(report: EvaluationReport, out: str | Path, extra: dict | None = None) -> list[Path]:
    """Write report.json, report.md and the PNG plots into ``out`` (the plots need the 'plots'
    extra: :class:`~dermsearch.errors.MissingExtraError` after the JSON and Markdown are written)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = {**report.to_json(), **(extra or {})}
    (out / "report.json").write_text(json.dumps(data, indent=1, allow_nan=True))
    (out / "report.md").write_text(to_markdown(report))
    for old in ("measures.png", "per_diagnosis.png"):   # an earlier report's plots never pass for this one's
        (out / old).unlink(missing_ok=True)
    return [out / "report.json", out / "report.md", *_plots(report, out)]
