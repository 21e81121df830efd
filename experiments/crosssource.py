"""What the issue #40 experiment scripts share: the rows, the groups the rules read, the 16-NN vote,
the distances, and the resumable batch loop that writes ``part-<n>.npz`` files.

Used by ``gram_colour.py``, ``fov_pooling.py``, ``lesion_pooling.py`` and ``generalist.py``; each
script's rule and protocol are in docs/experiments.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

K_VOTE = 16      # neighbours in the melanoma vote


def rows(data: Path) -> list[dict]:
    """HAM10000 train+val+test and all of isic-uda1, with source, split and mapped labels."""
    out = []
    ham_split = {r["image_id"]: r["split"] for r in csv.DictReader(open(data / "ham10000/split.csv"))}
    for r in csv.DictReader(open(data / "ham10000/labels.csv")):
        out.append({"id": r["image_id"], "path": str(data / "ham10000" / r["image_path"]), "source": "ham",
                    "split": ham_split[r["image_id"]], "diagnosis": r["diagnosis"], "lesion": r["lesion_id"],
                    "melanoma": int(r["melanoma"])})
    isic_split = {r["image_id"]: r["split"] for r in csv.DictReader(open(data / "isic-uda1/split.csv"))}
    dx = {"nevus": "nv", "melanoma": "mel"}
    for r in csv.DictReader(open(data / "isic-uda1/labels.csv")):
        out.append({"id": r["image_id"], "path": str(data / "isic-uda1" / r["image_path"]), "source": "isic",
                    "split": isic_split[r["image_id"]], "diagnosis": dx.get(r["diagnosis"], "unknown"),
                    "lesion": r["image_id"], "melanoma": int(r["melanoma"])})
    return out


def sample_selection(data: Path, train_sample: int) -> list[dict]:
    """HAM ``val``, isic ``xval`` and the first ``train_sample`` of a seed-40 permutation of HAM ``train``
    (a uniform sample; the lesion-pooling run's 3,000, whose first 1,000 the view runs use), in that order."""
    every = rows(data)
    val = [r for r in every if r["source"] == "ham" and r["split"] == "val"]
    xval = [r for r in every if r["source"] == "isic" and r["split"] == "xval"]
    train = [r for r in every if r["source"] == "ham" and r["split"] == "train"]
    order = np.random.default_rng(40).permutation(len(train))[:train_sample]
    return val + xval + [train[i] for i in order]


def views_rule(result: dict, cheap: str, dear: str) -> tuple[list[str], str | None]:
    """The test-time-view runs' rule (docs/experiments.md, "multi-scale views"): a candidate is eligible
    when ``mP``, ``vC``, ``hA``, ``xE`` and ``xH`` are each at least ``F1``'s - 0.005 and ``xC`` at least
    ``F1``'s + 0.01; ``cheap`` is chosen if eligible, unless ``dear`` is eligible too and beats it on
    ``vC + xC`` by at least 0.01; else ``dear`` if eligible; else nothing. (eligible, chosen)."""
    base = result["F1"]
    eligible = [v for v in (cheap, dear) if all(result[v][k] >= base[k] - 0.005 for k in ("mP", "vC", "hA", "xE", "xH"))
                and result[v]["xC"] >= base["xC"] + 0.01]

    def gain(v):
        return result[v]["vC"] + result[v]["xC"]

    if cheap in eligible:
        return eligible, dear if dear in eligible and gain(dear) - gain(cheap) >= 0.01 else cheap
    return eligible, dear if dear in eligible else None


def view_figures(data: dict[str, np.ndarray], gr: Groups, variants) -> dict[str, dict[str, float]]:
    """The view runs' six figures of each variant's feature ``f_<v>`` and head probability ``p_<v>``:
    ``mP``, ``vC`` (HAM ``val`` macro-P@5 and cosine vote AUC vs ``train``), ``hA`` (HAM ``val`` head
    AUC), ``xC``, ``xE`` (isic ``xval`` cosine and Euclidean vote AUC vs HAM), ``xH`` (isic head AUC)."""
    from sklearn.metrics import roc_auc_score

    from dermsearch.evaluate.gram_weights import macro_precision_at_k

    diag, mel, hv, ht, hc, xq, valid = gr.diagnosis, gr.melanoma, gr.hv, gr.ht, gr.hc, gr.xq, gr.valid
    out = {}
    for v in variants:
        f, p = data[f"f_{v}"], data[f"p_{v}"]
        dv = np.where(valid, cosine_distance(f[hv], f[ht]), np.inf)
        out[v] = {"mP": macro_precision_at_k(dv, valid, diag[hv], diag[ht]), "vC": vote_auc(dv, mel[hv], mel[ht]),
                  "hA": float(roc_auc_score(mel[hv], p[hv])),
                  "xC": vote_auc(cosine_distance(f[xq], f[hc]), mel[xq], mel[hc]),
                  "xE": vote_auc(euclidean_distance(f[xq], f[hc]), mel[xq], mel[hc]),
                  "xH": float(roc_auc_score(mel[xq], p[xq]))}
    return out


@dataclass
class Groups:
    """Label arrays over ``rows`` and the positions the rules read: ``hv`` HAM ``val`` (queries), ``ht``
    HAM ``train`` (their candidates), ``hc`` both (isic's candidates), ``xq`` labelled isic ``xval``
    queries; ``valid`` [len(hv), len(ht)]: False where query and candidate are one lesion."""

    source: np.ndarray
    split: np.ndarray
    diagnosis: np.ndarray
    melanoma: np.ndarray
    lesion: np.ndarray
    hv: np.ndarray
    ht: np.ndarray
    hc: np.ndarray
    xq: np.ndarray
    valid: np.ndarray

    @classmethod
    def of(cls, rows: list[dict]) -> Groups:
        src, split, diag, mel, lesion = (np.array([r[k] for r in rows])
                                         for k in ("source", "split", "diagnosis", "melanoma", "lesion"))
        hv = np.flatnonzero((src == "ham") & (split == "val"))
        ht = np.flatnonzero((src == "ham") & (split == "train"))
        xq = np.flatnonzero((src == "isic") & (split == "xval") & (diag != "unknown"))
        return cls(src, split, diag, mel, lesion, hv, ht, np.concatenate([hv, ht]), xq,
                   lesion[hv][:, None] != lesion[ht][None, :])


def vote_auc(dist: np.ndarray, q_mel: np.ndarray, c_mel: np.ndarray) -> float:
    """AUC of the melanoma share among each query's ``K_VOTE`` nearest candidates."""
    from dermsearch.evaluate.metrics import vote_auc as auc

    top = np.argpartition(dist, K_VOTE - 1, axis=1)[:, :K_VOTE]
    return float(auc(q_mel, c_mel[top]))


def cosine_distance(q: np.ndarray, c: np.ndarray) -> np.ndarray:
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    cn = c / np.linalg.norm(c, axis=1, keepdims=True)
    return 1.0 - qn @ cn.T


def euclidean_distance(q: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum((q * q).sum(1)[:, None] + (c * c).sum(1)[None, :] - 2 * q @ c.T, 0))


def load_parts(directory: Path, prefix: str = "part-") -> dict[str, np.ndarray]:
    """The ``<prefix>*.npz`` files of :func:`extract_parts`, concatenated in name order."""
    parts = [np.load(p) for p in sorted(Path(directory).glob(f"{prefix}*.npz")) if ".tmp" not in p.name]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0].files}


def extract_parts(rows: list[dict], out: Path, batch: int, load: Callable[[list[dict]], list],
                  compute: Callable[[list], dict[str, np.ndarray]], prefix: str = "part-") -> dict:
    """For each batch of ``rows`` without its ``OUT/<prefix><start>.npz``: ``compute(load(batch))``
    written atomically with the rows' ids (so a cut run resumes). The next batch is decoded in a
    thread while this one computes. Prints progress to stderr; returns {images, seconds}."""
    out.mkdir(parents=True, exist_ok=True)
    starts = [s for s in range(0, len(rows), batch) if not (out / f"{prefix}{s:05d}.npz").exists()]
    t0, n_done = time.time(), 0
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(load, rows[starts[0]:starts[0] + batch]) if starts else None
        for i, s in enumerate(starts):
            loaded = fut.result()
            if i + 1 < len(starts):
                fut = pool.submit(load, rows[starts[i + 1]:starts[i + 1] + batch])
            res = compute(loaded)
            tmp = out / f"{prefix}{s:05d}.tmp.npz"
            np.savez(tmp, ids=np.array([r["id"] for r in rows[s:s + batch]]), **res)
            tmp.replace(out / f"{prefix}{s:05d}.npz")
            n_done += len(loaded)
            print(f"{prefix}{s + len(loaded)}/{len(rows)}  {n_done / (time.time() - t0):.2f} img/s",
                  file=sys.stderr, flush=True)
    return {"images": n_done, "seconds": round(time.time() - t0, 1)}


def load_run(out: Path) -> tuple[list[dict], dict[str, np.ndarray], Groups]:
    """A finished extraction in ``out``: its rows (``rows.json``), parts and groups."""
    selected = json.loads((Path(out) / "rows.json").read_text())
    data = load_parts(out)
    assert list(data["ids"]) == [r["id"] for r in selected], "incomplete extraction"
    return selected, data, Groups.of(selected)


def features_and_heads(net, pooled: dict) -> dict[str, np.ndarray]:
    """Each variant's (members' pooled vectors) feature ``f_<v>`` and head melanoma probability ``p_<v>``."""
    from dermsearch.models.ensemble import melanoma_probability

    res = {}
    for v, p in pooled.items():
        feature, logits = net.combine(p)
        res[f"f_{v}"] = feature.numpy()
        res[f"p_{v}"] = melanoma_probability(logits, net.spec).numpy()
    return res


def write_result(result: dict, out: str | None) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")


def rows_args(p: argparse.ArgumentParser) -> None:
    """``extract --rows``: the images of an earlier run (its rows.json)."""
    p.add_argument("--rows", required=True, help="rows.json of experiments/lesion_pooling.py (the same images)")


def stored_feature_args(p: argparse.ArgumentParser) -> None:
    """``evaluate OUT_DIR FEATURE_DIR``: this run's parts and the lesion-pooling run's shipped vectors."""
    p.add_argument("out_dir")
    p.add_argument("feature_dir", help="experiments/lesion_pooling.py's output (the shipped F1 vectors)")


def main(doc: str, extract: Callable, evaluate: Callable,
         extract_args: Callable[[argparse.ArgumentParser], None] = lambda p: None,
         evaluate_args: Callable[[argparse.ArgumentParser], None] = lambda p: None, batch: int = 16) -> None:
    """The scripts' command line: ``extract DATA OUT [--batch] [--threads] ...`` and ``evaluate ...``."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract")
    e.add_argument("data")
    e.add_argument("out")
    e.add_argument("--batch", type=int, default=batch)
    e.add_argument("--threads", type=int, default=2)
    extract_args(e)
    v = sub.add_parser("evaluate")
    evaluate_args(v)
    v.add_argument("--out")
    args = ap.parse_args()
    extract(args) if args.cmd == "extract" else evaluate(args)
