"""Issue #40: colour handling for the Grams decided apart from the feature (no retraining).

Step 1 (``extract``): one pass of the packaged ensemble and segmenter per image and input colour
(``sog``: Shades of Gray, what the members were trained on and what the product feeds today;
``none``: the image as it is, what the frozen ImageNet stages 1-5 were trained on; only those
shared stages are run on it, so its stages 6-7 are left 0). For each colour
and each of two Gram definitions (``lesion``: the product's default, the segmenter's mask dilated
by 5 %, l2 per layer; ``image``: the paper's whole-image Gram, no normalisation) the per-layer Grams
are packed with beta_l = 1 (as ``extract.gram.style_vector``) and stored as float16 memory maps
``OUT/<colour>-<pool>.npy``, so that step 2 can recombine layers and colours with any weights.
The segmenter sees the uncorrected image, as in the product.

Step 2 (``evaluate``): the style measure's figures for a recipe (a colour per layer, a Gram
definition, the layer weights) on HAM10000 ``val`` (vs ``train``) and isic-uda1 ``xval`` (vs HAM
``train``+``val``), and the fits the pre-registered rule calls for (docs/experiments.md, issue #40).

    python experiments/gram_colour.py extract ../shared/data /work/gramcol
    python experiments/gram_colour.py evaluate ../shared/data /work/gramcol \
        --out docs/results/issue40_gram_colour_val.json
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crosssource import Groups, main, vote_auc, write_result  # noqa: E402  (shared by the #40 scripts)
from crosssource import rows as every_row  # noqa: E402

COLOURS = ("sog", "none")
POOLS = ("lesion", "image")


def _ordered(rows: list[dict]) -> list[dict]:
    """isic-uda1, then HAM ``val``, then HAM ``train`` in a seeded random order (so that any prefix
    of the train rows is a uniform sample of them); HAM ``test`` is left for the once-only report."""
    isic = [r for r in rows if r["source"] == "isic"]
    val = [r for r in rows if r["source"] == "ham" and r["split"] == "val"]
    train = [r for r in rows if r["source"] == "ham" and r["split"] == "train"]
    order = np.random.default_rng(40).permutation(len(train))
    return isic + val + [train[i] for i in order]


def extract(args) -> None:
    import torch

    from dermsearch.extract import Extractor, ExtractorConfig, load_image
    from dermsearch.extract.colour import apply_colour
    from dermsearch.extract.encoder import prepare_image
    from dermsearch.extract.gram import average_grams, normalise_grams, style_dim, style_vector
    from dermsearch.runtime import Runtime

    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = _ordered(every_row(data))
    if args.limit:
        rows = rows[: args.limit // 2] + rows[-args.limit // 2:]
    n = len(rows)
    torch.set_num_threads(args.threads)
    ex = Extractor(ExtractorConfig(), Runtime(backend="torch", device="cpu"))
    assert ex.config.colour == "shades-of-gray" and ex.config.gram_pool == "lesion", ex.config
    chans = ex.tap_channels
    sd = style_dim(chans)
    done_path = out / "done.json"
    done = json.loads(done_path.read_text())["done"] if done_path.exists() else 0
    mode = "r+" if done else "w+"
    mm = {f"{c}-{p}": np.lib.format.open_memmap(out / f"{c}-{p}.npy", mode=mode, dtype=np.float16, shape=(n, sd))
          for c in COLOURS for p in POOLS}
    (out / "meta.json").write_text(json.dumps({"rows": rows, "channels": list(chans), "margin": ex.config.gram_margin,
                                               "norm": ex.config.gram_norm}))
    shared = ex.net.shared_stages
    assert shared == 5, shared
    seg_size = ex._segmenter.input_size or ex.config.mask_size
    pool = ThreadPoolExecutor(1)

    def load(batch):
        return [prepare_image(load_image(r["path"]), ex.config.image_size, "none", seg_size) for r in batch]

    t0 = time.time()
    starts = list(range(done, n, args.batch))
    fut = pool.submit(load, rows[starts[0]:starts[0] + args.batch]) if starts else None
    for bi, s in enumerate(starts):
        prepared = fut.result()
        if bi + 1 < len(starts):
            fut = pool.submit(load, rows[starts[bi + 1]:starts[bi + 1] + args.batch])
        e = s + len(prepared)
        raw = np.stack([p[0] for p in prepared])
        with torch.inference_mode():
            seg = ex._segmenter.segment_batch(np.stack([p[1] for p in prepared]))
            masks = torch.from_numpy(ex.pool_masks(seg))
            for colour in COLOURS:
                if colour == "none":     # the shared ImageNet stages only: (h, their taps)
                    taps = [ex.net.members[0].forward_prefix(ex._normalised(raw), shared)[1]]
                else:
                    pix = np.stack([apply_colour(x, "shades-of-gray") for x in raw])
                    taps = ex.net(ex._normalised(pix)).member_taps
                lesion = normalise_grams(average_grams(taps, masks, "lesion", ex.config.gram_margin),
                                         ex.config.gram_norm)
                v = style_vector(lesion, [1.0] * len(lesion))
                mm[f"{colour}-lesion"][s:e, :v.shape[1]] = v.astype(np.float16)
                image = average_grams(taps)
                v = style_vector(image, [1.0] * len(image))
                mm[f"{colour}-image"][s:e, :v.shape[1]] = v.astype(np.float16)
        if bi % 10 == 0 or e == n:
            for m in mm.values():
                m.flush()
            tmp = done_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"done": e}))
            tmp.replace(done_path)
            el = time.time() - t0
            print(f"{e}/{n} {(e - done) / el:.1f} img/s", file=sys.stderr, flush=True)
    print(json.dumps({"images": n, "seconds": round(time.time() - t0, 1)}))


# ---------------------------------------------------------------- step 2: the rule's figures

def _stack(a: np.ndarray, b: np.ndarray, layout: list[dict], layers: list[int]) -> np.ndarray:
    """[len(layers), len(a), len(b)] float32 squared distances per layer (β = 1)."""
    out = np.empty((len(layers), len(a), len(b)), np.float32)
    for i, li in enumerate(layers):
        e = layout[li]
        sl = slice(e["offset"], e["offset"] + e["size"])
        q = np.asarray(a[:, sl], np.float32)
        c = np.asarray(b[:, sl], np.float32)
        out[i] = np.maximum((q * q).sum(1)[:, None] + (c * c).sum(1)[None, :] - 2.0 * (q @ c.T), 0.0)
    return out


def evaluate(args) -> None:
    from dermsearch.evaluate.gram_weights import fit_gram_weights, macro_precision_at_k
    from dermsearch.extract.gram import style_layout

    out = Path(args.out_dir)
    meta = json.loads((out / "meta.json").read_text())
    done = json.loads((out / "done.json").read_text())["done"]
    rows = meta["rows"][:done]
    chans = meta["channels"]
    layout = style_layout(chans, "lesion", [1.0] * len(chans))
    L = len(layout)
    gr = Groups.of(rows)                                 # isic's candidates hc: HAM val + the train sample
    diag, mel, lesion = gr.diagnosis, gr.melanoma, gr.lesion
    hv, ht, hc, xq = gr.hv, gr.ht, gr.hc, gr.xq
    t0 = time.time()
    arr = {v: np.load(out / f"{v}.npy", mmap_mode="r") for v in ("sog-lesion", "none-lesion", "sog-image")}
    both = list(range(L))
    frozen = list(range(5))
    stacks = {}
    for name, (va, vb) in {"sog": ("sog-lesion", "sog-lesion"), "paper": ("sog-image", "sog-image")}.items():
        stacks[name] = (_stack(arr[va][hv], arr[vb][ht], layout, both), _stack(arr[va][xq], arr[vb][hc], layout, both))
    s_val, s_x = stacks["sog"]
    n_val = _stack(arr["none-lesion"][hv], arr["none-lesion"][ht], layout, frozen)
    n_x = _stack(arr["none-lesion"][xq], arr["none-lesion"][hc], layout, frozen)
    stacks["split"] = (np.concatenate([n_val, s_val[5:]]), np.concatenate([n_x, s_x[5:]]))
    print(f"stacks in {time.time() - t0:.0f} s: val {len(hv)} x {len(ht)}, xval {len(xq)} x {len(hc)}", file=sys.stderr)
    valid_val = gr.valid

    def figures(name: str, w: np.ndarray, qv=None, qx=None) -> dict:
        """mP, vA on HAM val queries ``qv`` and xA on isic xval queries ``qx`` (positions), weights w [L]."""
        qv = np.arange(len(hv)) if qv is None else qv
        qx = np.arange(len(xq)) if qx is None else qx
        sv, sx = stacks[name]
        dv = np.where(valid_val[qv], np.tensordot(w, sv[:, qv], 1), np.inf)
        dx = np.tensordot(w, sx[:, qx], 1)
        return {"mP": macro_precision_at_k(dv, valid_val[qv], diag[hv][qv], diag[ht]),
                "vA": vote_auc(dv, mel[hv][qv], mel[ht]), "xA": vote_auc(dx, mel[xq][qx], mel[hc])}

    shipped = json.loads((Path(__file__).resolve().parents[1] / "src/dermsearch/weights/gram-weights.json").read_text())
    w_s0 = np.asarray(shipped["betas"], np.float32) ** 2
    w_paper = (1.0 / np.asarray(chans, np.float32)) ** 2
    report = {"rows": {"val_queries": len(hv), "train_candidates": len(ht), "xval_queries": len(xq),
                       "isic_candidates": len(hc)}}
    report["P"] = figures("paper", w_paper)
    report["S0"] = figures("sog", w_s0)
    floor = report["P"]["xA"]

    def fit(name: str, joint: bool, qv, qx):
        sv, sx = stacks[name]
        sv_q, vv = sv[:, qv], valid_val[qv]
        objective = None
        if joint:
            def objective(w):
                dx = np.tensordot(w, sx[:, qx], 1)
                xa = vote_auc(dx, mel[xq][qx], mel[hc])
                if xa < floor:
                    return xa - 1.0
                return macro_precision_at_k(np.tensordot(w, sv_q, 1), vv, diag[hv][qv], diag[ht])
        return fit_gram_weights(sv_q, vv, diag[hv][qv], diag[ht], 5, chans, objective=objective)

    rng = np.random.default_rng(0)
    les = np.unique(lesion[hv])
    half = set(rng.permutation(les)[: len(les) // 2].tolist())
    fold_v = np.array([x in half for x in lesion[hv]])
    fold_x = np.zeros(len(xq), bool)
    fold_x[rng.permutation(len(xq))[: len(xq) // 2]] = True
    for cand, (name, joint) in {"S-J": ("sog", True), "H-P": ("split", False), "H-J": ("split", True)}.items():
        t1 = time.time()
        dv_all = np.full((len(hv), len(ht)), np.inf, np.float32)
        dx_all = np.empty((len(xq), len(hc)), np.float32)
        folds = []
        for part in (True, False):       # fit on the other fold's queries, rank this fold's with them
            fv, fx = np.flatnonzero(fold_v != part), np.flatnonzero(fold_x != part)
            tv, tx = np.flatnonzero(fold_v == part), np.flatnonzero(fold_x == part)
            f = fit(name, joint, fv, fx)
            w = np.asarray(f.betas, np.float32) ** 2
            sv, sx = stacks[name]
            dv_all[tv] = np.where(valid_val[tv], np.tensordot(w, sv[:, tv], 1), np.inf)
            dx_all[tx] = np.tensordot(w, sx[:, tx], 1)
            folds.append({"shares": f.shares, "score": f.score, "start": f.start})
        held = {"mP": macro_precision_at_k(dv_all, valid_val, diag[hv], diag[ht]),
                "vA": vote_auc(dv_all, mel[hv], mel[ht]), "xA": vote_auc(dx_all, mel[xq], mel[hc])}
        full = fit(name, joint, np.arange(len(hv)), np.arange(len(xq)))
        report[cand] = {**held, "folds": folds, "in_sample_all": figures(name, np.asarray(full.betas, np.float32) ** 2),
                        "betas_all": full.betas, "shares_all": full.shares, "seconds": round(time.time() - t1)}
        print(cand, json.dumps({k: report[cand][k] for k in ("mP", "vA", "xA")}), file=sys.stderr, flush=True)
    s0 = report["S0"]
    verdict = {}
    for c in ("S-J", "H-P", "H-J"):
        r = report[c]
        verdict[c] = {"eligible": bool(r["xA"] >= floor and r["mP"] >= s0["mP"] - 0.02 and r["vA"] >= s0["vA"] - 0.01),
                      "joint": r["vA"] + r["xA"]}
    report["rule"] = {"floor_xA": floor, "S0_joint": s0["vA"] + s0["xA"], "candidates": verdict}
    write_result(report, args.out)


if __name__ == "__main__":
    def _extract_args(p):
        p.add_argument("--limit", type=int, default=0)

    def _evaluate_args(p):
        p.add_argument("data")
        p.add_argument("out_dir")

    main(__doc__, extract, evaluate, _extract_args, _evaluate_args, batch=32)
