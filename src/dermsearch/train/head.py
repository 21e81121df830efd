"""Phase two of the ensemble's training: BatchNorm -> Dense(SELU) = the search feature -> head.

Runs on the frozen members' pooled vectors, so a variant costs seconds, not hours. Beside the
focal loss of the head, an optional metric-learning loss (``metric_loss``: supervised contrastive or
proxy-anchor, weighted by ``metric_weight``) acts on the feature itself, which is what search uses.
Options: class-balanced sampling (``balanced``), an exponential moving average of the weights
(``ema`` = its decay, 0 = off; the average is what is evaluated and kept), and the selection rule
(``head_select``): the epoch with the best val balanced accuracy of the head, or the best val
macro-P@5 of the feature's Euclidean neighbours among the training images (``retrieval``).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import ConfigError
from ..evaluate.feature_knn import feature_retrieval
from ..models.normalization import NORMALISATIONS
from ..names import HEAD_SELECT
from . import seeds
from .harness import Run, RunFiles, WeightAverage, fit, load_metadata, optimise, resume_key
from .losses import binary_focal_loss, metric_loss_module, multiclass_focal_loss

__all__ = ["HeadData", "HeadTask", "HEAD_SELECT", "fit_head", "head_loss", "epoch_sample", "PooledGraph",
           "pooled_encoder"]



@dataclass
class HeadData:
    """Pooled vectors [N, members, P] with integer targets; labels/lesions/melanoma of the images for
    the retrieval figures (``train_rows``: the rows of ``x_train`` that are original images)."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    val_melanoma: np.ndarray
    train_labels: np.ndarray
    val_labels: np.ndarray
    train_melanoma: np.ndarray
    train_rows: np.ndarray | None = None


def head_loss(cfg, logits: torch.Tensor, y: torch.Tensor, class_weights: torch.Tensor | None) -> torch.Tensor:
    if cfg.target == "melanoma":
        return binary_focal_loss(logits, y, cfg.focal_alpha, cfg.focal_gamma)
    return multiclass_focal_loss(logits, y, cfg.focal_gamma, class_weights)


def epoch_sample(balanced: bool, base: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One epoch's order: a permutation of ``base``, or as many class-balanced draws with replacement."""
    if not balanced:
        return rng.permutation(base)
    counts = np.bincount(y[base])
    w = 1.0 / counts[y[base]]
    return rng.choice(base, size=len(base), replace=True, p=w / w.sum())


@dataclass(frozen=True)
class HeadTask:
    """What phase two learns from and is judged by: the pooled vectors, ``metrics`` (val logits on the
    CPU -> figures) and ``score`` (figures -> selection score, higher better; used unless ``head_select``
    is ``retrieval``), the loss's ``class_weights`` (on the net's device) and ``source``: what the pooled
    vectors were computed from (part of the resume key: another source starts afresh)."""
    data: HeadData
    metrics: Callable[[torch.Tensor], dict]
    score: Callable[[dict], float]
    class_weights: torch.Tensor | None = None
    source: str = ""


class _HeadLoop:
    """Phase two's trained modules (norms, dense layer, head and the metric loss's proxies), optimiser
    and schedule, and the three steps :func:`~.harness.fit` calls."""

    def __init__(self, net, cfg, task: HeadTask, files: RunFiles, log: Callable[[str], None]):
        if cfg.head_select not in HEAD_SELECT:
            raise ConfigError(f"head_select must be one of {HEAD_SELECT}, not {cfg.head_select!r}")
        self.net, self.cfg, self.task, self.data = net, cfg, task, task.data
        self.device = device = next(net.head.parameters()).device
        modules = [net.norms, net.dense, net.head]
        metric = metric_loss_module(cfg.metric_loss, max(net.head.out_features, 2), net.feature_dim,
                                    cfg.metric_temperature)
        groups = [{"params": [p for m in modules for p in m.parameters()]}]
        if metric is not None and any(True for _ in metric.parameters()):
            metric = metric.to(device)
            groups.append({"params": list(metric.parameters()), "lr": cfg.head_lr * 100})   # proxies learn fast
        self.metric = metric
        opt = torch.optim.AdamW(groups, lr=cfg.head_lr, weight_decay=cfg.head_weight_decay)
        self.batch = max(cfg.batch_size, 256)
        steps = math.ceil(len(self.data.x_train) / self.batch)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, [g.get("lr", cfg.head_lr) for g in groups],
                                                    total_steps=max(1, cfg.head_epochs * steps))
        ema = WeightAverage(modules, cfg.ema) if cfg.ema > 0 else None
        parts = {"norms": net.norms, "dense": net.dense, "head": net.head}
        if metric is not None:
            parts["metric"] = metric
        self.run = Run(nn.ModuleDict(parts), opt, sched, files,
                       {**resume_key(cfg.to_dict()), "pooled_vectors": task.source}, cfg.head_epochs,
                       name="phase two", log=log, average=ema,
                       best_metadata=lambda rec: {"record": json.dumps(rec)})   # its figures, for a resumed run

    def forward(self, xb: torch.Tensor, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        if train and self.cfg.head_dropout > 0:
            xb = nn.functional.dropout(xb, self.cfg.head_dropout, training=True)
        return self.net.combine(list(xb.unbind(1)))

    @torch.inference_mode()
    def features(self, x: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        f, lg = zip(*(self.forward(x[i:i + 2048].to(self.device)) for i in range(0, len(x), 2048)))
        return torch.cat(f).float().cpu().numpy(), torch.cat(lg).float().cpu()

    def train_epoch(self, epoch: int) -> float:
        cfg, data, run = self.cfg, self.data, self.run
        for mod in (self.net.norms, self.net.dense, self.net.head):
            mod.train()
        order = epoch_sample(cfg.balanced, np.arange(len(data.x_train)), data.y_train.numpy(),
                             seeds.head_epoch_rng(cfg.seed, epoch))
        total = 0.0
        for i in range(0, len(order), self.batch):
            idx = torch.from_numpy(order[i:i + self.batch])
            y = data.y_train[idx].to(self.device)
            feature, logits = self.forward(data.x_train[idx].to(self.device), train=True)
            loss = head_loss(cfg, logits, y, self.task.class_weights)
            if self.metric is not None:
                loss = loss + cfg.metric_weight * self.metric(feature, y)
            total += optimise(loss, run.optimizer, run.scheduler, run.average) * len(idx)
        return total / len(order)

    def validate(self) -> tuple[dict, float]:
        data = self.data
        self.net.eval()
        f_val, logits = self.features(data.x_val)
        vm = self.task.metrics(logits)
        rows = np.arange(len(data.x_train)) if data.train_rows is None else data.train_rows
        f_tr, _ = self.features(data.x_train[torch.from_numpy(rows)])
        r = feature_retrieval(f_val, data.val_labels, data.val_melanoma, f_tr, data.train_labels, data.train_melanoma)
        vm.update({f"retrieval_{a}": b for a, b in r.items()})
        return vm, vm["retrieval_macro_p_at_5"] if self.cfg.head_select == "retrieval" else self.task.score(vm)

    def describe(self, rec: dict, improved: bool) -> str:
        return (f"head epoch {rec['epoch']}/{self.cfg.head_epochs}: train loss {rec['train_loss']:.4f}, "
                f"val loss {rec['val_loss']:.4f}, val melanoma AUC {rec['val_auc']:.4f}"
                + (f", val bal. acc {rec['val_balanced_accuracy']:.4f}" if "val_balanced_accuracy" in rec else "")
                + f", val feature macro-P@5 {rec['val_retrieval_macro_p_at_5']:.4f}")


def fit_head(net, cfg, task: HeadTask, files: RunFiles | None = None,
             log: Callable[[str], None] = print) -> tuple[dict, list[dict]]:
    """Train ``net``'s norms, dense layer and head on ``task`` through :func:`~.harness.fit`, keeping the
    epoch best by ``cfg.head_select``; loads its weights into ``net`` and returns (its val metrics, the
    per-epoch history). ``files``: where the loop's resumable state goes (default: a temporary directory,
    removed afterwards)."""
    if files is None:
        with tempfile.TemporaryDirectory(prefix="dermsearch-head-") as d:
            return fit_head(net, cfg, task, RunFiles(Path(d)), log)
    loop = _HeadLoop(net, cfg, task, files, log)
    state = fit(loop.run, loop.train_epoch, loop.validate, loop.describe)
    loop.run.model.load_state_dict(load_file(str(files.best)), strict=True)
    net.eval()
    record = json.loads(load_metadata(files.best)["record"])
    best = {k[len("val_"):]: v for k, v in record.items() if k.startswith("val_")}
    return best, [{"phase": 2, **rec} for rec in state["history"]]


# ------------------------------------------------------------------ the members' pooled vectors

class PooledGraph(nn.Module):
    """uint8-range pixels [B, 3, S, S] -> the members' pooled vectors [B, M, P], averaged over test-time views."""

    def __init__(self, net, mean: torch.Tensor, std: torch.Tensor, views: int):
        super().__init__()
        self.net, self.views = net, views
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.net.pooled_views((pixels - self.mean) / self.std, self.views), 1)


def pooled_encoder(net, normalization: str, views: int, image_size: int, device, directory: Path, log=print):
    """A function (uint8 images [N, 3, S, S], log) -> pooled vectors [N, M, P] on the CPU. On a CPU the
    graph runs in ONNX Runtime (several times torch's speed on 2 cores); elsewhere in torch."""
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) for v in NORMALISATIONS[normalization])
    graph = PooledGraph(net, mean, std, views).eval()
    run = None
    if device.type == "cpu":
        try:
            import onnxruntime as ort

            from ..extract.onnx import _export
            path = directory / f"pooled-x{views}.onnx.tmp"
            _export(graph, torch.rand(2, 3, image_size, image_size) * 255, path, ["pooled"])
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            path.unlink(missing_ok=True)

            def run(x: torch.Tensor) -> torch.Tensor:
                return torch.from_numpy(session.run(["pooled"], {"pixels": x.numpy()})[0])
        except Exception as e:   # no ONNX Runtime, or a graph it cannot export: torch does the same work
            log(f"phase two: ONNX Runtime not used ({type(e).__name__}: {e}); encoding with torch")
            run = None
    if run is None:
        graph = graph.to(device)

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return graph(x.to(device)).float().cpu()

    def encode(images: torch.Tensor, log) -> torch.Tensor:
        t0 = time.perf_counter()
        out = torch.cat([run(images[i:i + 32].float()) for i in range(0, len(images), 32)])
        log(f"phase two: members' pooled vectors of {len(images)} images x {views} view(s) "
            f"in {time.perf_counter() - t0:.0f} s")
        return out

    return encode
