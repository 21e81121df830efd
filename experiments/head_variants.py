"""Phase-two variants on the frozen members' pooled vectors (#17): loss, sampling, EMA, selection, TTA, colour.

Reads ``experiments/feature_vectors.py``'s output; for each variant trains BN -> Dense -> head with
``dermsearch.train.head.fit_head`` (the trainer's own phase two) and prints one JSON line of `val`
figures: macro-P@5 of the feature's Euclidean and cosine neighbours (val queries vs train
candidates), 16-NN melanoma vote AUC, 5-NN balanced accuracy, head AUC; plus the isic-uda1
cross-source figures (queries vs all HAM10000 images, `unknown` rows left out of AUCs), reported
only, never used to choose. `test` is never read.

    python experiments/head_variants.py --fv /tmp/fv --out /tmp/fv/variants.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from dermsearch.evaluate.feature_knn import feature_retrieval
from dermsearch.models.ensemble import default_ensemble_path, load_ensemble, melanoma_probability
from dermsearch.train.classifier import ClassifierTrainConfig
from dermsearch.train.head import HeadData, HeadTask, fit_head, head_loss

VARIANTS = {
    "shipped": None,                                   # the packaged head, not retrained
    "focal": {},                                       # the shipped recipe, retrained (reproducibility check)
    "focal-ema": {"ema": 0.99},
    "focal-balanced": {"balanced": True},
    "focal-select-retrieval": {"head_select": "retrieval"},
    "supcon": {"metric_loss": "supcon", "head_select": "retrieval"},
    "supcon-w0.3": {"metric_loss": "supcon", "metric_weight": 0.3, "head_select": "retrieval"},
    "supcon-t0.05": {"metric_loss": "supcon", "metric_temperature": 0.05, "head_select": "retrieval"},
    "supcon-balanced": {"metric_loss": "supcon", "balanced": True, "head_select": "retrieval"},
    "supcon-ema": {"metric_loss": "supcon", "ema": 0.99, "head_select": "retrieval"},
    "proxy-anchor": {"metric_loss": "proxy-anchor", "head_select": "retrieval"},
    "proxy-anchor-balanced": {"metric_loss": "proxy-anchor", "balanced": True, "head_select": "retrieval"},
}


def load(fv: str, name: str, views: list[str]) -> tuple[dict, torch.Tensor]:
    meta = json.load(open(f"{fv}/{name}.json"))
    x = np.mean([np.load(f"{fv}/{name}-{v}.npy").astype(np.float32) for v in views], axis=0)
    return meta, torch.from_numpy(x)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fv", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--views", nargs="+", default=["id"], help="views averaged at query and index time (TTA)")
    ap.add_argument("--train-views", nargs="+", default=None, help="views the head trains on (default: --views)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--seed", type=int, default=0, help="phase-two seed (initialisation and batch order)")
    a = ap.parse_args()
    net0, spec = load_ensemble(default_ensemble_path())
    classes = list(spec.classes)
    ham, x_ham = load(a.fv, "ham", a.views)
    isic, x_isic = load(a.fv, "isic", a.views)
    split = np.array(ham["split"])
    dx = np.array(ham["diagnosis"], dtype=object)
    mel = np.array(ham["melanoma"])
    tr, va = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    y = torch.tensor([classes.index(d) for d in dx])
    tviews = a.train_views or a.views
    if tviews == a.views:
        x_tr, y_tr = x_ham[tr], y[tr]
    else:   # each training image once per view
        stack = [torch.from_numpy(np.load(f"{a.fv}/ham-{v}.npy")[tr].astype(np.float32)) for v in tviews]
        x_tr = torch.stack(stack, 1).flatten(0, 1)
        y_tr = y[tr].repeat_interleave(len(tviews))
    i_dx = np.array(isic["diagnosis"], dtype=object)
    i_mel = np.where(i_dx == "unknown", -1, np.array(isic["melanoma"]))
    for name in a.variants:
        t0 = time.perf_counter()
        net, _ = load_ensemble(default_ensemble_path())
        cfg = ClassifierTrainConfig(labels="-", target=spec.target, seed=a.seed)
        if VARIANTS[name] is not None:
            cfg = replace(cfg, **VARIANTS[name])
            torch.manual_seed(cfg.seed)
            fresh = type(net.norms)([torch.nn.BatchNorm1d(n.num_features) for n in net.norms])
            net.norms = fresh
            net.dense.reset_parameters()
            net.head.reset_parameters()

            def metrics_fn(logits, cfg=cfg):
                p = melanoma_probability(logits, spec).numpy()
                return {"loss": float(head_loss(cfg, logits, y[va], None)),
                        "auc": float(roc_auc_score(mel[va], p)),
                        "balanced_accuracy": float(balanced_accuracy_score(y[va].numpy(), logits.argmax(1).numpy()))}

            data = HeadData(x_tr, y_tr, x_ham[va], y[va], mel[va], dx[tr], dx[va], mel[tr],
                            None if tviews == a.views else np.arange(0, len(x_tr), len(tviews)))
            _, history = fit_head(net, cfg, HeadTask(data, metrics_fn, lambda vm: vm["balanced_accuracy"]),
                                  log=lambda s: None)
        net.eval()
        with torch.inference_mode():
            f_ham, lg_ham = net.combine(list(x_ham.unbind(1)))
            f_isic, lg_isic = net.combine(list(x_isic.unbind(1)))
        f_ham, f_isic = f_ham.numpy(), f_isic.numpy()
        p_ham = melanoma_probability(lg_ham, spec).numpy()
        p_isic = melanoma_probability(lg_isic, spec).numpy()
        rec = {"variant": name, "seed": a.seed, "views": a.views, "train_views": tviews, "tag": a.tag,
               "config": VARIANTS[name]}
        for metric in ("euclidean", "cosine"):
            r = feature_retrieval(f_ham[va], dx[va], mel[va], f_ham[tr], dx[tr], mel[tr], metric)
            rec.update({f"val_{metric}_{k}": round(v, 4) for k, v in r.items()})
        rec["val_head_auc"] = round(float(roc_auc_score(mel[va], p_ham[va])), 4)
        rec["val_head_bacc"] = round(float(balanced_accuracy_score(y[va].numpy(), lg_ham[va].argmax(1).numpy())), 4)
        known = i_mel >= 0
        for metric in ("euclidean", "cosine"):
            r = feature_retrieval(f_isic, i_dx, i_mel, f_ham, dx, mel, metric)
            rec[f"isic_{metric}_vote_auc"] = round(r["vote_auc"], 4)
        rec["isic_head_auc"] = round(float(roc_auc_score(i_mel[known], p_isic[known])), 4)
        if VARIANTS[name] is not None:   # the selection's optimism: the last epoch's figure beside the kept one
            rec["val_last_epoch_macro_p_at_5"] = round(history[-1]["val_retrieval_macro_p_at_5"], 4)
            rec["kept_epoch"] = max(history, key=lambda h: h["val_retrieval_macro_p_at_5"]
                                    if cfg.head_select == "retrieval" else h["val_balanced_accuracy"])["epoch"]
        rec["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(rec), flush=True)
        with open(a.out, "a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
