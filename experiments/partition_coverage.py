"""Issue #44: would a coarse partition (IVF cells) of fast mode's codes find the exact top 5?

Reads the code-space archive and exact references ``benchmarks/bench_scaling.py --rows N
--workdir DIR`` leaves in ``DIR`` (``codes/``, ``codes_references.npz``), partitions the archive's
rows into ``--cells`` k-means cells (scikit-learn ``MiniBatchKMeans``, 64 sampled rows per cell)
in one space at a time, and for each of the benchmark's queries and each probe share counts how
many of the exact top 5 of each measure lie in the cells nearest to the query (the cells, nearest
centre first, until they hold that share of the rows). Coverage bounds the recall@5 any search
restricted to those cells can reach. Prints JSON.

Spaces: ``feature`` (the feature PCA projections), ``style`` (the style PCA projections),
``style_sketch`` (those and the residual count sketches), ``feature_direction`` (the features
reconstructed from their PCA and scaled to unit length, for the cosine), ``mask`` (the 16 x 16
mask cell counts).

    python experiments/partition_coverage.py /tmp/dermsearch-codes --out docs/results/issue44_partition_coverage_1m.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import scaling_codes as sc  # noqa: E402

SPACES = {"feature": ("euclidean", "cosine"), "feature_direction": ("cosine", "euclidean"), "style": ("style",),
          "style_sketch": ("style",), "mask": ("dice",)}


def space_rows(codes: Path, space: str):
    """The function giving rows of ``space`` for row numbers."""
    a = {n: np.load(codes / f"{n}.npy", mmap_mode="r") for n in
         ("feature_proj", "style_proj", "style_sketch", "mask_cells")}
    if space == "feature":
        return lambda r: np.asarray(a["feature_proj"][r])
    if space == "style":
        return lambda r: np.asarray(a["style_proj"][r])
    if space == "style_sketch":
        return lambda r: np.hstack([np.asarray(a["style_proj"][r]), np.asarray(a["style_sketch"][r])])
    if space == "mask":
        return lambda r: np.asarray(a["mask_cells"][r])
    basis, mean = np.load(codes / "feature_basis.npy"), np.load(codes / "feature_mean.npy")

    def direction(r):
        x = np.asarray(a["feature_proj"][r]) @ basis + mean
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    return direction


def coverage(rows_of, n: int, cells: int, qrows, refs, measures, probes, seed: int = 0) -> dict:
    from sklearn.cluster import MiniBatchKMeans

    t0 = time.perf_counter()
    sample = np.sort(np.random.default_rng(seed).choice(n, min(n, 64 * cells), replace=False))
    km = MiniBatchKMeans(cells, random_state=seed, n_init=1, batch_size=4096, max_iter=50,
                         compute_labels=False).fit(rows_of(sample))
    centres = km.cluster_centers_.astype(np.float32)
    c2 = np.einsum("ij,ij->i", centres, centres)
    assign = np.concatenate([np.argmin(c2[None] - 2 * (rows_of(np.arange(s, min(n, s + 65_536))) @ centres.T), 1)
                             for s in range(0, n, 65_536)])
    sizes = np.bincount(assign, minlength=cells)
    out = {"seconds": round(time.perf_counter() - t0, 1), "largest_cell": int(sizes.max()), "coverage": {}}
    for probe in probes:
        hit = {m: 0 for m in measures}
        for j, qi in enumerate(qrows):
            q = rows_of(np.array([qi]))[0]
            order = np.argsort(np.einsum("ij,ij->i", centres - q, centres - q))
            upto = int(np.searchsorted(np.cumsum(sizes[order]), probe * n)) + 1
            chosen = np.zeros(cells, dtype=bool)
            chosen[order[:upto]] = True
            for m in measures:
                hit[m] += int(chosen[assign[refs[m][j]]].sum())
        out["coverage"][str(probe)] = {m: round(h / (5 * len(qrows)), 4) for m, h in hit.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workdir", type=Path, help="bench_scaling.py's --workdir")
    ap.add_argument("--cells", type=int, default=1000)
    ap.add_argument("--probes", type=float, nargs="+", default=[0.01, 0.02, 0.04])
    ap.add_argument("--queries", type=int, default=100, help="the benchmark's --queries")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    codes = args.workdir / "codes"
    with np.load(args.workdir / "codes_references.npz") as z:
        raw = {c: z[c] for c in z.files}
    n = raw["euclidean"].shape[1]
    n_real = json.loads((codes / "fast.json").read_text())["synthetic"]["real_rows"]
    qrows = np.random.default_rng(1).choice(n_real, max(20, args.queries), replace=False)    # as bench_scaling
    refs = sc.top5(raw, qrows, n, len(qrows))
    result = {"archive_rows": n, "cells": args.cells, "queries": len(qrows), "spaces": {}}
    for space, measures in SPACES.items():
        result["spaces"][space] = coverage(space_rows(codes, space), n, args.cells, qrows, refs, measures,
                                           args.probes)
        print(space, json.dumps(result["spaces"][space]), file=sys.stderr)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
