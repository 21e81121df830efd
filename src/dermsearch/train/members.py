"""Phase one of the ensemble's training: each member alone (its backbone and its own head), with
focal loss and, optionally, a metric loss on its pooled vector; one resumable :func:`~.harness.fit`
loop per member, its files ``members/m{i}-*``.

A member's saved state is resumed when its *resume key* (:func:`member_key`) matches: the config
without phase two's settings and without the settings added later at their neutral value, so that
runs started by earlier versions resume.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import ConfigError
from ..models.efficientnet import Backbone
from ..models.ensemble import EnsembleFeatureNet
from ..models.registry import create_backbone
from ..models.weights import state_fingerprint
from . import seeds
from .config import NEUTRAL_SETTINGS, ClassifierTrainConfig
from .harness import (
    Run,
    RunFiles,
    WeightAverage,
    autocast,
    fit,
    iterate,
    optimise,
    resolved_precision,
    resume_key,
)
from .head import epoch_sample
from .inputs import RunContext
from .losses import metric_loss_module

__all__ = ["Member", "train_member", "member_key", "member_file", "member_indices", "new_backbone",
           "load_member_into", "PHASE_TWO_FIELDS"]

# the settings only phase two uses: never part of a member's resume key
PHASE_TWO_FIELDS = ("head_epochs", "head_lr", "head_variants", "head_dropout", "head_weight_decay", "feature_dim",
                    "metric_loss", "metric_weight", "metric_temperature", "ema", "head_select", "tta")


def new_backbone(cfg: ClassifierTrainConfig, device: torch.device) -> Backbone:
    """A member's backbone as initialised (ImageNet or random weights), without its classifier."""
    b = create_backbone(cfg.backbone, "imagenet" if cfg.weights == "imagenet" else None)
    b.classifier = None
    return b.to(device)


class Member(nn.Module):
    """One member in phase one: its backbone (prefix unused when shared) and its own head."""

    def __init__(self, backbone: Backbone, k: int, outputs: int, dropout: float, metric: nn.Module | None = None):
        super().__init__()
        self.backbone, self.k = backbone, k
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.pooled_dim, outputs)
        # phase one's metric loss on the pooled vector; its learned proxies (proxy-anchor) are saved and resumed
        # with the member but are not part of the ensemble
        self.metric = metric

    def pooled(self, h: torch.Tensor) -> torch.Tensor:
        if self.k == 0:
            return self.backbone(h).pooled
        return self.backbone.forward_suffix(h, self.k, []).pooled

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.pooled(h)))

    def forward_both(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the pooled vector, the logits)."""
        pooled = self.pooled(h)
        return pooled, self.head(self.dropout(pooled))

    def loss(self, h: torch.Tensor, y: torch.Tensor, head_loss_fn: Callable, metric_weight: float,
             precision: str = "auto") -> torch.Tensor:
        """Phase one's training loss: ``head_loss_fn(logits, y)`` plus, with a metric loss, ``metric_weight``
        times it on the pooled vector (``y``: integer class labels); the network runs under ``precision``'s
        autocast (``Runtime.precision``), the losses in float32."""
        with autocast(h.device, precision):
            pooled, logits = self.forward_both(h)
        loss = head_loss_fn(logits.float(), y)
        if self.metric is not None:
            loss = loss + metric_weight * self.metric(pooled.float(), y.long())
        return loss

    def metric_parameters(self) -> list[nn.Parameter]:
        return [] if self.metric is None else list(self.metric.parameters())

    def trainable(self) -> list[nn.Parameter]:
        """The network's trained parameters (the metric loss's proxies are apart: ``metric_parameters``)."""
        if self.k == 0:
            skip = {id(p) for p in self.metric_parameters()}
            return [p for p in self.parameters() if id(p) not in skip]
        mods = [*self.backbone.stages[self.k:], self.backbone.head, self.head]
        return [p for m in mods for p in m.parameters()]

    def param_groups(self, lr: float, decay: float) -> list[dict]:
        """The trainable parameters with discriminative learning rates: the last stage, the
        backbone's final conv and the head at ``lr``; each trained stage below at ``decay`` times
        the rate of the stage above it; the stem, when trained (no shared stages), as stage 1."""
        stages = self.backbone.stages
        groups = [{"params": [*stages[-1].parameters(), *self.backbone.head.parameters(), *self.head.parameters()],
                   "lr": lr}]
        for depth, i in enumerate(range(len(stages) - 2, self.k - 1, -1), start=1):
            groups.append({"params": list(stages[i].parameters()), "lr": lr * decay ** depth})
        if self.k == 0:
            groups[-1]["params"] += list(self.backbone.stem.parameters())
        grouped = [id(p) for g in groups for p in g["params"]]
        if len(grouped) != len(set(grouped)) or set(grouped) != {id(p) for p in self.trainable()}:
            raise RuntimeError("param_groups does not partition the trainable parameters (a module was added?)")
        return groups

    def set_train(self) -> None:
        self.train()
        if self.k:
            self.backbone.stem.eval()
            for s in self.backbone.stages[:self.k]:
                s.eval()


def member_indices(cfg: ClassifierTrainConfig, member: int, n: int) -> np.ndarray:
    """The training images member ``member`` sees (its bootstrap sample, all but its fold, or all)."""
    rng = seeds.member_sample_rng(cfg.seed, member)
    if cfg.diversity == "bootstrap":
        return np.sort(rng.integers(0, n, n))
    if cfg.diversity == "fold" and cfg.members > 1:
        fold = seeds.fold_rng(cfg.seed).permutation(n) % cfg.members
        return np.flatnonzero(fold != member)
    return np.arange(n)


def member_key(cfg: ClassifierTrainConfig, m: int, start: str = "") -> dict:
    """What member ``m``'s saved state depends on: the config without phase two's settings,
    without the settings at their neutral value (``NEUTRAL_SETTINGS``: one rate, no weight average,
    as before they existed), and without ``snapshot_epochs`` where it plays no part (every member
    unless they are snapshots, and a snapshot ensemble's first member, so runs from before it existed
    resume); a later snapshot also depends on ``start``, the fingerprint of the weights it starts from
    (the previous member's last), so it is retrained whenever that member was."""
    ignore = PHASE_TWO_FIELDS + (() if cfg.diversity == "snapshot" and m > 0 else ("snapshot_epochs",))
    # settings at their neutral value (one learning rate, no average) keep the key of runs made before they existed
    ignore += tuple(k for k, v in NEUTRAL_SETTINGS.items() if getattr(cfg, k) == v)
    if cfg.member_metric_loss == "none":
        ignore += ("member_metric_weight",)
    elif cfg.member_metric_loss == "supcon":   # phase one's SupCon uses the temperature too
        ignore = tuple(k for k in ignore if k != "metric_temperature")
    return resume_key(cfg.to_dict(), ignore) | ({"snapshot_of": start} if start else {})


def member_file(cfg: ClassifierTrainConfig, out: Path, m: int) -> Path:
    """The checkpoint of member ``m`` that the ensemble is built from: its best epoch by ``val``, or,
    for a snapshot ensemble, the end of its cycle (its last epoch, where the next member starts)."""
    files = RunFiles(out / "members", f"m{m}-")
    return files.last if cfg.diversity == "snapshot" else files.best


def load_member_into(net: EnsembleFeatureNet, m: int, member_state: dict[str, torch.Tensor]) -> None:
    """Member ``m`` of ``net`` (backbone and own head) from a phase-one checkpoint."""
    target = net.members[m].state_dict()
    backbone = {n[len("backbone."):]: v for n, v in member_state.items() if n.startswith("backbone.")}
    missing = set(target) - set(backbone)
    if missing:
        raise ConfigError(f"member {m}: the checkpoint lacks {sorted(missing)[:5]}: not members of this architecture")
    net.members[m].load_state_dict({n: backbone[n] for n in target}, strict=True)
    net.member_heads[m].load_state_dict({"weight": member_state["head.weight"], "bias": member_state["head.bias"]})


class _MemberLoop:
    """Member ``m``'s model, optimiser and schedule, and the three steps :func:`~.harness.fit` calls."""

    def __init__(self, p: RunContext, m: int):
        cfg, data, device = p.cfg, p.inputs.data, p.inputs.device
        self.p, self.m, self.files = p, m, RunFiles(p.out / "members", f"m{m}-")
        seeds.seed_torch(seeds.member_init_seed(cfg.seed, m))
        backbone = new_backbone(cfg, device)
        metric = metric_loss_module(cfg.member_metric_loss, max(data.outputs, 2), backbone.pooled_dim,
                                    cfg.metric_temperature)
        member = self.member = Member(backbone, p.inputs.prefix.k, data.outputs, cfg.dropout, metric).to(device)
        if cfg.weights == "random" and member.k:
            # the shared prefix must be the same network for every member: member 0's initialisation
            seeds.seed_torch(cfg.seed)
            member.backbone.load_state_dict(new_backbone(cfg, device).state_dict())
        self.start = ""
        if cfg.diversity == "snapshot" and m > 0:
            # a snapshot: the previous member's weights at the end of its cycle (its last epoch)
            member.load_state_dict(load_file(str(RunFiles(self.files.directory, f"m{m - 1}-").last)), strict=True)
            self.start = state_fingerprint(member)
        self.epochs = epochs = cfg.member_epochs(m)
        groups = ([{"params": member.trainable(), "lr": cfg.lr}] if cfg.stage_lr_decay == 1 else
                  member.param_groups(cfg.lr, cfg.stage_lr_decay))
        if member.metric_parameters():   # proxies learn fast, as in phase two
            groups.append({"params": member.metric_parameters(), "lr": cfg.lr * 100, "weight_decay": 0.0})
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.base_idx = member_indices(cfg, m, len(data.y_train))
        steps = math.ceil(len(self.base_idx) / cfg.batch_size)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, [g["lr"] for g in self.opt.param_groups],
                                                         total_steps=max(1, epochs * steps), pct_start=0.15)
        self.average = WeightAverage([member], cfg.member_ema, warmup=True) if cfg.member_ema else None
        reach = (1 + epochs * steps) / (10 + epochs * steps)   # the warm-up's decay at this member's last step
        if self.average is not None and cfg.member_ema > reach:
            p.log(f"member {m + 1}/{cfg.members}: member_ema {cfg.member_ema} is not reached in {epochs * steps} "
                  f"steps; the warm-up ends at {reach:.3f} (any decay above it trains the same)")

    def train_epoch(self, epoch: int) -> float:
        p, cfg, member, data = self.p, self.p.cfg, self.member, self.p.inputs.data
        member.set_train()
        rng, g = seeds.member_epoch_rngs(cfg.seed, self.m, epoch)
        order = epoch_sample(cfg.balanced, self.base_idx, data.y_train.numpy(), rng)
        total = 0.0
        for i in iterate(len(order), cfg.batch_size, f"member {self.m + 1}/{cfg.members} epoch {epoch + 1}",
                         p.progress):
            idx = order[i:i + cfg.batch_size]
            h = p.inputs.batch(idx, rng.integers(0, 8, len(idx)), g)
            y = data.y_train[torch.from_numpy(idx)].to(p.inputs.device)
            loss = member.loss(h, y, data.loss, cfg.member_metric_weight, p.precision)
            total += optimise(loss, self.opt, self.sched, self.average) * len(idx)
        return total / len(order)

    def validate(self) -> tuple[dict, float]:
        self.member.eval()
        with torch.inference_mode():
            logits = torch.cat([self.member(h) for h in self.p.inputs.val_batches()]).float().cpu()
        vm = self.p.inputs.data.val_metrics(logits)
        return vm, self.p.inputs.data.score(vm)

    def describe(self, rec: dict, improved: bool) -> str:
        cfg = self.p.cfg
        extra = f", val bal. acc {rec['val_balanced_accuracy']:.4f}" if "val_balanced_accuracy" in rec else ""
        return (f"member {self.m + 1}/{cfg.members} epoch {rec['epoch']}/{self.epochs}: train loss "
                f"{rec['train_loss']:.4f}, {'weight average: ' if self.average is not None else ''}val loss "
                f"{rec['val_loss']:.4f}, val melanoma AUC {rec['val_auc']:.4f}{extra}"
                f"{' (best)' if improved else ''}, {rec['seconds']:.0f} s")


def train_member(p: RunContext, m: int) -> dict:
    """Train member ``m`` (or resume it, or find it done); returns its harness state."""
    loop = _MemberLoop(p, m)
    run = Run(loop.member, loop.opt, loop.sched, loop.files, member_key(p.cfg, m, loop.start), loop.epochs,
              name=f"member {m + 1}/{p.cfg.members}", log=p.log, average=loop.average,
              record={"precision": resolved_precision(p.inputs.device, p.precision)})
    state = fit(run, loop.train_epoch, loop.validate, loop.describe)
    for rec in state["history"]:
        rec.setdefault("member", m + 1)
    return state
