"""Issue #44: which compact style code ranks like the float32 rows, with no full rows behind it?

Fast mode past 100,000 images re-ranks a few hundred rows a query by their style vectors. For the
index to fit 64 KB an image *everything included*, those re-rank rows must be the only style rows
kept, and smaller than int8 (70.8 KB for the 70,844 live columns). This script measures, on the
real rows of an index exported by ``benchmarks/bench_scaling.py`` (``WORKDIR/real/styles.npy``),
how often each candidate code's style ranking finds the exact float32 top 5:

- ``int8``: today's (centred on a mean row, one max-abs scale per row and group of <= 16,384 columns);
- ``int4``: the same with 15 levels (half the bytes);
- ``rot-int4``: each group's columns given random signs and an orthonormal DCT-II first (an
  orthogonal map: distances unchanged, energy spread evenly over the columns, so a max-abs scale
  wastes fewer levels), then int4;
- ``rot-int4-c``: as ``rot-int4`` with the scale set from the group's RMS (clipped at ``--clip``
  RMS) instead of its maximum;
- each also ``-debiased``: the estimate ``‖q − x̂‖² − ‖x − x̂‖²`` (each row's rounding error is
  known and stored, and ``E‖q − x̂‖² = ‖q − x‖² + ‖x − x̂‖²`` for noise independent of ``q − x``).

Queries: ``--queries`` real rows (seed 44); candidates: every other real row (the row itself left
out; other images of the same lesion stay in: near-duplicates are the hard case for a code).
Recall@5 = |exact top 5 ∩ code's top 5| / 5, averaged. Prints and writes JSON.

    python experiments/style_codes.py /tmp/dermsearch-codes /work/ham-index \
        --out docs/results/issue44_style_codes_real.json
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
from pathlib import Path

import numpy as np
import scipy.fft

GROUP = 16384


def groups_of(layers: list[dict]) -> list[tuple[int, int]]:
    """Live column groups: the Grams with a weight, cut into pieces of at most GROUP columns."""
    out = []
    for e in layers:
        if float(e["beta"]) <= 0:
            continue
        a, b = int(e["offset"]), int(e["offset"]) + int(e["size"])
        out.extend((c, min(c + GROUP, b)) for c in range(a, b, GROUP))
    return out


def columns(X: np.ndarray, groups) -> np.ndarray:
    return np.concatenate([X[:, a:b] for a, b in groups], axis=1)


class Code:
    def __init__(self, groups, bits: int, rotate: bool, clip: float | None, seed: int = 0):
        self.spans, at = [], 0
        for a, b in groups:
            self.spans.append((at, at + b - a))
            at += b - a
        self.levels = (1 << (bits - 1)) - 1
        self.rotate, self.clip = rotate, clip
        rng = np.random.default_rng(seed)
        self.signs = rng.choice(np.array([-1.0, 1.0]), size=at) if rotate else None

    def forward(self, C: np.ndarray) -> np.ndarray:
        if not self.rotate:
            return C
        out = np.empty_like(C)
        for a, b in self.spans:
            out[:, a:b] = scipy.fft.dct(C[:, a:b] * self.signs[a:b], type=2, norm="ortho", axis=1, workers=2)
        return out

    def roundtrip(self, C: np.ndarray, ints: list | None = None) -> np.ndarray:
        """The decoded rows (in the rotated space: distances are the same there); with ``ints``, each
        group's integer codes are appended to it too (for the entropy of the code)."""
        R = self.forward(C)
        out = np.empty_like(R)
        for a, b in self.spans:
            seg = R[:, a:b]
            if self.clip is None:
                s = np.abs(seg).max(axis=1) / self.levels
            else:
                s = self.clip * np.sqrt((seg * seg).mean(axis=1)) / self.levels
            s[s == 0] = 1.0
            c = np.clip(np.rint(seg / s[:, None]), -self.levels, self.levels)
            if ints is not None:
                ints.append(c.astype(np.int16))
            out[:, a:b] = c * s[:, None]
        return out


def entropy_bytes(ints: list[list[np.ndarray]], spans) -> tuple[float, float]:
    """(order-0 entropy of the codes in bytes a row, each group's histogram over every row; zlib level 9
    of the int8 codes, bytes a row over the rows given): what an entropy coder stores instead of a
    fixed width. The scales (one float a group) are left out: 8 groups, 32 bytes."""
    total = 0.0
    for g in range(len(spans)):
        v = np.concatenate([blk[g].ravel() for blk in ints])
        _, counts = np.unique(v, return_counts=True)
        p = counts / counts.sum()
        total += float(-(p * np.log2(p)).sum()) * (spans[g][1] - spans[g][0]) / 8
    rows = np.concatenate([np.concatenate(blk, axis=1) for blk in ints[:1]]).astype(np.int8)
    z = float(np.mean([len(zlib.compress(r.tobytes(), 9)) for r in rows[:64]]))
    return total, z


def top5(d2: np.ndarray) -> np.ndarray:
    idx = np.argpartition(d2, 5, axis=1)[:, :5]
    return idx


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir", type=Path)
    ap.add_argument("index", type=Path)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--clip", type=float, default=3.0)
    ap.add_argument("--variants", default="int8,int4,rot-int8,rot-int4,rot-int4-c,rot-int3-c",
                    help="comma-separated: [rot-]intB[-c] (B bits; rot: signs + DCT first; -c: scale "
                         "--clip x RMS instead of the max)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    t0 = time.time()
    layers = json.loads((args.index / "dermsearch.json").read_text())["style_layers"]
    groups = groups_of(layers)
    S = np.load(args.workdir / "real" / "styles.npy", mmap_mode="r")
    n = S.shape[0]
    X = np.empty((n, sum(b - a for a, b in groups)), dtype=np.float32)
    for a in range(0, n, 1024):
        X[a:a + 1024] = columns(np.asarray(S[a:a + 1024]), groups)
    rng = np.random.default_rng(0)
    mu = X[np.sort(rng.choice(n, 2000, replace=False))].mean(axis=0, dtype=np.float64).astype(np.float32)
    X -= mu
    qrows = np.sort(np.random.default_rng(44).choice(n, args.queries, replace=False))
    Q = X[qrows].astype(np.float64)
    # exact squared distances, float64
    sq = np.einsum("ij,ij->i", X, X, dtype=np.float64)
    exact = np.empty((len(qrows), n))
    for a in range(0, n, 2048):
        B = X[a:a + 2048].astype(np.float64)
        exact[:, a:a + 2048] = (Q * Q).sum(1)[:, None] + sq[None, a:a + 2048] - 2 * Q @ B.T
    exact[np.arange(len(qrows)), qrows] = np.inf
    truth = top5(exact)
    say = {"rows": n, "queries": len(qrows), "live_columns": X.shape[1], "groups": len(groups), "variants": {}}
    print(json.dumps({k: v for k, v in say.items() if k != "variants"}), flush=True)
    variants = {}
    for name in args.variants.split(","):
        bits = int(name.removeprefix("rot-").split("-")[0].removeprefix("int"))
        variants[name] = Code(groups, bits, name.startswith("rot-"), args.clip if name.endswith("-c") else None)
    for name, code in variants.items():
        t = time.time()
        Qr = code.forward(Q.astype(np.float32)).astype(np.float64)
        est = np.empty_like(exact)
        err = np.empty(n)
        ints: list[list[np.ndarray]] = []
        for a in range(0, n, 1024):
            C = X[a:a + 1024]
            ints.append([])
            H = code.roundtrip(C, ints[-1]).astype(np.float64)
            R = code.forward(C).astype(np.float64)
            err[a:a + 1024] = ((R - H) ** 2).sum(1)
            est[:, a:a + 1024] = (Qr * Qr).sum(1)[:, None] + (H * H).sum(1)[None] - 2 * Qr @ H.T
        est[np.arange(len(qrows)), qrows] = np.inf
        rel = np.sqrt(err) / np.sqrt(sq)
        ent, zl = entropy_bytes(ints, code.spans)
        del ints
        for tag, e in ((name, est), (name + "-debiased", est - err[None])):
            bits = code.levels.bit_length() + 1
            got = top5(e)
            rec = np.mean([len(set(truth[i]) & set(got[i])) / 5 for i in range(len(qrows))])
            finite = np.isfinite(exact)
            dev = np.abs(e - exact)[finite].max() / np.median(exact[finite])
            say["variants"][tag] = {"recall_at_5": round(float(rec), 4),
                                    "max_abs_error_over_median_d2": float(f"{dev:.3g}"),
                                    "median_row_error_over_norm": float(f"{np.median(rel):.3g}"),
                                    "bits": bits, "fixed_width_bytes": X.shape[1] * bits // 8,
                                    "entropy_bytes": round(ent), "zlib9_bytes": round(zl)}
            print(tag, json.dumps(say["variants"][tag]), f"{time.time() - t:.0f}s", flush=True)
    say["seconds"] = round(time.time() - t0, 1)
    if args.out:
        args.out.write_text(json.dumps(say, indent=1) + "\n")


if __name__ == "__main__":
    main()
