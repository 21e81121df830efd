"""Classification figures of a trained ensemble file: melanoma AUC of its head and of each member's own head."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import torch
from sklearn.metrics import roc_auc_score

from ..errors import ConfigError
from ..extract.colour import shades_of_gray_batch
from ..extract.datasets import load_labelled
from ..models.device import runtime_device
from ..models.ensemble import load_ensemble, melanoma_probability
from ..models.normalization import NORMALISATIONS
from ..runtime import Runtime
from .evaluator import is_unknown_diagnosis

__all__ = ["evaluate_classifier"]


@torch.inference_mode()
def evaluate_classifier(weights: str | Path, labels_csv: str | Path, split_csv: str | Path | None = None,
                        on: str | None = "test", limit: int = 0, runtime: Runtime | None = None,
                        log: Callable[[str], None] = print) -> dict:
    """Melanoma AUC of the ensemble head and of each member's own head on a split (or on every row);
    ``runtime``: device, threads and batch size (default ``Runtime()``). Rows whose diagnosis is
    "unknown" are left out, as ``dermsearch evaluate`` leaves them out (``excluded_unknown``)."""
    runtime = runtime or Runtime()
    batch_size = runtime.batch_size
    net, spec = load_ensemble(weights)
    dev = runtime_device(runtime)
    net = net.to(dev)
    data = load_labelled(labels_csv, split_csv if on else None, (on,) if on else None, spec.image_size,
                         "melanoma" if spec.target == "melanoma" else "diagnosis", spec.melanoma_class, limit)
    unknown = _unknown_ids(labels_csv)
    known = [i for i, image_id in enumerate(data.ids) if image_id not in unknown]
    if not known:
        raise ConfigError(f"{labels_csv}: every selected row has diagnosis 'unknown': nothing to evaluate")
    images, y = data.images[known], data.melanoma[known]     # the network never sees the left-out rows
    if (spec.train or {}).get("colour", "none") == "shades-of-gray":   # as the network was trained
        images = shades_of_gray_batch(images)
    mean, std = (torch.tensor(v, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
                 for v in NORMALISATIONS[spec.normalization])
    views = int((spec.train or {}).get("tta", 1))   # the test-time views its head was fitted on
    head, members = [], []
    for i in range(0, len(images), batch_size):
        x = (images[i:i + batch_size].to(dev).float() - mean) / std
        o = net(x, views=views)
        head.append(melanoma_probability(o.logits, spec).cpu())
        if o.member_logits is not None:
            members.append(torch.stack([melanoma_probability(lg, spec) for lg in o.member_logits], 1).cpu())
    p = torch.cat(head).numpy()
    result = {"images": len(known), "melanoma": int(y.sum()), "excluded_unknown": len(data) - len(known),
              "target": spec.target, "auc_ensemble": _auc(y, p)}
    if members:
        pm = torch.cat(members).numpy()
        result["auc_members"] = [_auc(y, pm[:, j]) for j in range(pm.shape[1])]
        result["auc_member_mean_prob"] = _auc(y, pm.mean(1))
    if result["auc_ensemble"] is None:
        result["note"] = "AUC undefined: the rows hold only one class (melanoma or not)"
    log(json.dumps(result))
    return result


def _auc(y, p) -> float | None:
    """The melanoma AUC, or None where it is undefined (one class only)."""
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None


def _unknown_ids(labels_csv) -> set[str]:
    with open(labels_csv, newline="") as f:
        return {r["image_id"] for r in csv.DictReader(f) if is_unknown_diagnosis(r.get("diagnosis"))}
