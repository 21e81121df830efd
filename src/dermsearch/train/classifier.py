"""``dermsearch train classifier``: the paper's two-phase training of the EfficientNet ensemble.

Phase one trains each member alone (its backbone and its own head) with focal loss. Phase two
freezes the members and trains GAP -> BatchNorm -> concatenation -> Dense(1024, SELU) -> head.

Targets: ``melanoma`` (the paper's: one sigmoid unit, binary focal loss) or ``diagnosis`` (softmax
over the label column's classes, multi-class focal loss, optional class weights).

Frozen shared stages (``trainable_stages`` < 7): the first ``7 − trainable_stages`` stages keep
their ImageNet weights and are shared by every member, so their outputs are computed once per
training image (and, with the offline x7 expansion, per variant) and cached. That is what makes
training feasible on a CPU; ``trainable_stages=7`` trains whole members as the paper did.

Member diversity: ``bootstrap`` (default; each member sees its own bootstrap sample of the
training images and its own seed: bagging), ``fold`` (member i leaves out the i-th of M folds),
``seed`` (all images, different seeds only) or ``snapshot`` (a snapshot ensemble: member 0 trains
for ``epochs``, each later member starts from the previous one's last weights and trains
``snapshot_epochs`` (default 1) more with its own one-cycle schedule, a warm restart; all images;
the ensemble keeps each snapshot's last epoch).

Outputs in ``out_dir``: ``ensemble.safetensors`` (fp16, with its spec and metrics as metadata),
``config.json`` (the resolved config), ``history.json``, ``metrics.json``; ``members/`` and
``cache/`` hold the resumable state of an interrupted run.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from torch import nn

from ..errors import ConfigError
from ..extract.colour import shades_of_gray_batch
from ..models.device import runtime_device
from ..models.efficientnet import Backbone
from ..models.ensemble import EnsembleFeatureNet, EnsembleSpec, build_ensemble, melanoma_probability, save_ensemble
from ..models.registry import create_backbone
from ..models.weights import state_fingerprint
from ..runtime import Runtime
from .augment import Augmenter, x7_variant
from .config import NEUTRAL_SETTINGS, TARGETS, ClassifierTrainConfig
from .data import LabelledSet, load_labelled
from .harness import (
    Run,
    RunFiles,
    WeightAverage,
    atomic_json,
    atomic_safetensors,
    autocast,
    fit,
    iterate,
    machine,
    resolved_precision,
    resume_key,
)
from .head import HeadData, epoch_sample, fit_head, head_loss, pooled_encoder
from .losses import metric_loss_module
from .prefix import FrozenPrefix

__all__ = ["ClassifierTrainConfig", "train_classifier", "TARGETS"]



# ------------------------------------------------------------------ helpers

class _Labels:
    """Class list and integer targets for a split."""

    def __init__(self, cfg: ClassifierTrainConfig, train: LabelledSet):
        self.target = cfg.target
        if cfg.target == "melanoma":
            self.classes: tuple[str, ...] = ("melanoma",)
        else:
            self.classes = tuple(sorted(set(train.labels)))
            if len(self.classes) < 2:
                raise ConfigError(f"the diagnosis target needs at least 2 classes, found {self.classes}")

    def encode(self, data: LabelledSet) -> torch.Tensor:
        if self.target == "melanoma":
            return torch.from_numpy(data.melanoma.astype(np.int64))
        unknown = sorted(set(data.labels) - set(self.classes))
        if unknown:
            raise ConfigError(f"labels not seen in training: {unknown}")
        index = {c: i for i, c in enumerate(self.classes)}
        return torch.tensor([index[v] for v in data.labels], dtype=torch.long)

    @property
    def outputs(self) -> int:
        return 1 if self.target == "melanoma" else len(self.classes)


def _mel_prob(cfg: ClassifierTrainConfig, logits: torch.Tensor, classes: tuple[str, ...]) -> torch.Tensor:
    spec = EnsembleSpec(head_outputs=logits.shape[1], classes=classes, melanoma_class=cfg.melanoma_class)
    return melanoma_probability(logits, spec)


def _metrics(cfg: ClassifierTrainConfig, logits: torch.Tensor, y: torch.Tensor, melanoma: np.ndarray,
             classes: tuple[str, ...], class_weights: torch.Tensor | None) -> dict:
    out = {"loss": float(head_loss(cfg, logits, y, class_weights))}
    p = _mel_prob(cfg, logits, classes).numpy() if (cfg.target == "melanoma" or cfg.melanoma_class in classes) \
        else None
    out["auc"] = float(roc_auc_score(melanoma, p)) if p is not None and 0 < melanoma.sum() < len(melanoma) \
        else float("nan")
    if cfg.target == "diagnosis":
        out["balanced_accuracy"] = float(balanced_accuracy_score(y.numpy(), logits.argmax(1).numpy()))
    return out


def _score(cfg: ClassifierTrainConfig, m: dict) -> float:
    """The model-selection figure: val melanoma AUC, or balanced accuracy for the diagnosis target."""
    v = m["balanced_accuracy"] if cfg.target == "diagnosis" else m["auc"]
    return -math.inf if math.isnan(v) else v


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def pooled_cache_key(cfg: ClassifierTrainConfig, member_states: list[str], variants: int) -> str:
    """The key of phase two's cached pooled vectors: what they are computed from (the trained members'
    states, the images that are ``train`` and ``val`` and how each is presented), nothing that only
    phase two uses, so that phase-two variants share them."""
    return _fingerprint(member_states, variants, cfg.limit, cfg.labels, cfg.split, cfg.train_split, cfg.val_split,
                        cfg.colour, cfg.tta, cfg.image_size, cfg.normalization)


class _Member(nn.Module):
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


def _member_indices(cfg: ClassifierTrainConfig, member: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(cfg.seed * 7919 + member)
    if cfg.diversity == "bootstrap":
        return np.sort(rng.integers(0, n, n))
    if cfg.diversity == "fold" and cfg.members > 1:
        fold = np.random.default_rng(cfg.seed).permutation(n) % cfg.members
        return np.flatnonzero(fold != member)
    return np.arange(n)


# ------------------------------------------------------------------ training

@dataclass
class _Session:
    """What every stage of one ``train_classifier`` call shares: its config, where it writes, the data,
    the frozen prefix (and its cached outputs) and how batches reach the members."""
    cfg: ClassifierTrainConfig
    out: Path
    device: torch.device
    precision: str
    log: Callable[[str], None]
    progress: bool
    train: LabelledSet
    val: LabelledSet
    labels: _Labels
    y_train: torch.Tensor
    y_val: torch.Tensor
    class_weights: torch.Tensor | None
    k: int
    fresh_backbone: Callable[[], Backbone]
    batch_input: Callable
    val_inputs: Callable
    prefix: FrozenPrefix
    pool: torch.Tensor | None
    n_var: int


def train_classifier(cfg: ClassifierTrainConfig, out_dir: str | Path, log: Callable[[str], None] = print,
                     progress: bool = True, cache_dir: str | Path | None = None,
                     runtime: Runtime | None = None) -> dict:
    """Train the ensemble; returns the validation metrics. Resumes where an interrupted run stopped,
    whatever ``runtime`` (device, threads; default ``Runtime()``) either ran on.

    ``cache_dir`` (default ``out_dir/cache``) holds the frozen-prefix outputs; runs that differ only
    in target or later settings can share it."""
    cfg.require_labels()
    out = Path(out_dir)
    (out / "members").mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir else out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    runtime = runtime or Runtime()
    device, precision = runtime_device(runtime), runtime.precision
    torch.manual_seed(cfg.seed)
    atomic_json(out / "config.json", cfg.to_dict())
    t_start = time.perf_counter()

    train = load_labelled(cfg.labels, cfg.split, (cfg.train_split,), cfg.image_size, cfg.column,
                          cfg.melanoma_class, cfg.limit)
    val = load_labelled(cfg.labels, cfg.split, (cfg.val_split,), cfg.image_size, cfg.column,
                        cfg.melanoma_class, cfg.limit)
    if cfg.colour == "shades-of-gray":     # the same correction the extractor applies at index and query time
        train.images = shades_of_gray_batch(train.images)
        val.images = shades_of_gray_batch(val.images)
    labels = _Labels(cfg, train)
    y_train, y_val = labels.encode(train), labels.encode(val)
    class_weights = None
    if cfg.target == "diagnosis" and cfg.class_weights:
        counts = torch.bincount(y_train, minlength=labels.outputs).float().clamp_min(1)
        class_weights = (counts.sum() / (len(counts) * counts)).to(device)
    log(f"data: {len(train)} train / {len(val)} val images at {cfg.image_size}px, target {cfg.target} "
        f"({labels.outputs} output{'s' if labels.outputs > 1 else ''}), device {device} "
        f"({time.perf_counter() - t_start:.0f} s)")

    def fresh_backbone() -> Backbone:
        b = create_backbone(cfg.backbone, "imagenet" if cfg.weights == "imagenet" else None)
        b.classifier = None
        return b.to(device)

    k = cfg.shared_stages
    torch.manual_seed(cfg.seed)
    base = fresh_backbone().eval()
    source = _source_members(cfg, labels) if cfg.init_members else None
    if source is not None:       # the frozen prefix is the source ensemble's own
        base.load_state_dict(source.members[0].state_dict(), strict=False)
    prefix = FrozenPrefix(base, k, cfg, device)
    parts = (cfg.labels, cfg.split, cfg.limit, cfg.backbone, cfg.weights, k, cfg.image_size, asdict(cfg.augment_config),
             cfg.seed, *([cfg.colour] if cfg.colour != "none" else []))
    key = _fingerprint(*parts)      # val holds the originals only: its outputs never depend on the zoom
    train_key = _fingerprint(*parts, f"zoom {cfg.scale_jitter}") if cfg.scale_jitter else key
    n_var = 8 if cfg.augment == "x7" else 1
    cached = k > 0 and cfg.augment != "online" and source is None   # reused members: no phase one to feed
    pool = prefix.cache(train, n_var, cache / f"train-{cfg.train_split}-x{n_var}-{train_key}.npy", log,
                        progress) if cached else None
    val_h = (prefix.cache(val, 1, cache / f"val-{cfg.val_split}-{key}.npy", log, progress)
             if k and source is None else None)   # reused members: phase two encodes whole images
    augmenter = Augmenter(cfg.augment_config, cfg.scale_jitter) if cfg.augment == "online" else None

    def batch_input(idx: np.ndarray, variants: np.ndarray, g: torch.Generator) -> torch.Tensor:
        if pool is not None:
            return pool[torch.from_numpy(idx * n_var + variants)].to(device).float()
        unit = train.images[torch.from_numpy(idx)].float() / 255.0
        if augmenter is not None:
            unit = augmenter(unit.to(device), generator=g)
        elif n_var == 8:
            unit = torch.cat([x7_variant(unit[j:j + 1], int(v), cfg.augment_config, g, cfg.scale_jitter)
                              for j, v in enumerate(variants)])
        return prefix.run(unit).float() if k else prefix.normalise(unit.to(device))

    def val_inputs():
        for i in range(0, len(val), 128):
            if val_h is not None:
                yield val_h[i:i + 128].to(device).float()
            else:
                yield prefix.normalise(val.images[i:i + 128].to(device).float() / 255.0)

    # ---- phase one
    ses = _Session(cfg, out, device, precision, log, progress, train, val, labels, y_train, y_val, class_weights, k,
                   fresh_backbone, batch_input, val_inputs, prefix, pool, n_var)
    members_state = [] if source is not None else [_train_member(ses, m) for m in range(cfg.members)]

    # ---- phase two
    spec = EnsembleSpec(backbone=cfg.backbone, members=cfg.members, shared_stages=k, feature_dim=cfg.feature_dim,
                        head_outputs=labels.outputs, member_heads=True, target=cfg.target, classes=labels.classes,
                        melanoma_class=cfg.melanoma_class, image_size=cfg.image_size,
                        normalization=cfg.normalization,
                        train={**cfg.to_dict(), **({"members_trained_with": source.spec.train}
                                                   if source is not None else {})})
    net = build_ensemble(spec).to(device)
    if source is not None:
        net.members.load_state_dict(source.members.state_dict())
        net.member_heads.load_state_dict(source.member_heads.state_dict())
        log(f"phase one: skipped, the {cfg.members} members of {cfg.init_members} are reused")
    for m in range(cfg.members if source is None else 0):
        _load_member_into(net, m, load_file(str(_member_file(cfg, out, m))))
    if k and source is None:
        # the shared prefix is the frozen ImageNet one
        shared = {n: p for n, p in base.state_dict().items() if n.startswith("stem.") or
                  any(n.startswith(f"stages.{i}.") for i in range(k))}
        net.members[0].load_state_dict(shared, strict=False)
    metrics = _train_head(ses, net, spec, members_state)
    metrics["seconds"] = time.perf_counter() - t_start
    atomic_json(out / "metrics.json", metrics)
    return metrics


def _source_members(cfg: ClassifierTrainConfig, labels: _Labels) -> EnsembleFeatureNet:
    """The ensemble whose members ``cfg.init_members`` reuses, checked against ``cfg``."""
    from ..models.ensemble import default_ensemble_path, load_ensemble

    path = default_ensemble_path() if cfg.init_members == "default" else Path(cfg.init_members)
    net, spec = load_ensemble(path)
    net.spec = spec
    want = {"backbone": cfg.backbone, "members": cfg.members, "shared_stages": cfg.shared_stages,
            "image_size": cfg.image_size, "target": cfg.target, "classes": tuple(labels.classes),
            "normalization": cfg.normalization, "member_heads": True,
            "colour": cfg.colour}
    got = {**{k: getattr(spec, k) for k in want if k != "colour"}, "colour": (spec.train or {}).get("colour", "none")}
    got["classes"] = tuple(got["classes"])
    diff = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    if diff:
        raise ConfigError(f"{path}: its members cannot be reused for this config; differing settings "
                         + ", ".join(f"{k}: file {a!r} vs config {b!r}" for k, (a, b) in diff.items()))
    return net


PHASE_TWO_FIELDS = ("head_epochs", "head_lr", "head_variants", "head_dropout", "head_weight_decay", "feature_dim",
                    "metric_loss", "metric_weight", "metric_temperature", "ema", "head_select", "tta")


def _member_key(cfg: ClassifierTrainConfig, m: int, start: str = "") -> dict:
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


def _member_file(cfg: ClassifierTrainConfig, out: Path, m: int) -> Path:
    """The checkpoint of member ``m`` that the ensemble is built from: its best epoch by ``val``, or,
    for a snapshot ensemble, the end of its cycle (its last epoch, where the next member starts)."""
    files = RunFiles(out / "members", f"m{m}-")
    return files.last if cfg.diversity == "snapshot" else files.best


def _train_member(ses: _Session, m: int) -> dict:
    cfg = ses.cfg
    files = RunFiles(ses.out / "members", f"m{m}-")
    torch.manual_seed(cfg.seed * 1000 + m)
    backbone = ses.fresh_backbone()
    metric = metric_loss_module(cfg.member_metric_loss, max(ses.labels.outputs, 2), backbone.pooled_dim,
                                cfg.metric_temperature)
    member = _Member(backbone, ses.k, ses.labels.outputs, cfg.dropout, metric).to(ses.device)
    if cfg.weights == "random" and ses.k:
        # the shared prefix must be the same network for every member: member 0's initialisation
        torch.manual_seed(cfg.seed)
        member.backbone.load_state_dict(ses.fresh_backbone().state_dict())
    start = ""
    if cfg.diversity == "snapshot" and m > 0:
        # a snapshot: the previous member's weights at the end of its cycle (its last epoch)
        member.load_state_dict(load_file(str(RunFiles(files.directory, f"m{m - 1}-").last)), strict=True)
        start = state_fingerprint(member)
    epochs = cfg.member_epochs(m)
    groups = ([{"params": member.trainable(), "lr": cfg.lr}] if cfg.stage_lr_decay == 1 else
              member.param_groups(cfg.lr, cfg.stage_lr_decay))
    if member.metric_parameters():   # proxies learn fast, as in phase two
        groups.append({"params": member.metric_parameters(), "lr": cfg.lr * 100, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    base_idx = _member_indices(cfg, m, len(ses.y_train))
    steps = math.ceil(len(base_idx) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, [g["lr"] for g in opt.param_groups],
                                                total_steps=max(1, epochs * steps), pct_start=0.15)
    y_np = ses.y_train.numpy()
    cw = None if ses.class_weights is None else ses.class_weights.cpu()
    average = WeightAverage([member], cfg.member_ema, warmup=True) if cfg.member_ema else None
    if average is not None:
        reach = (1 + epochs * steps) / (10 + epochs * steps)   # the warm-up's decay at this member's last step
        if cfg.member_ema > reach:
            ses.log(f"member {m + 1}/{cfg.members}: member_ema {cfg.member_ema} is not reached in {epochs * steps} "
                    f"steps; the warm-up ends at {reach:.3f} (any decay above it trains the same)")

    def train_epoch(epoch: int) -> float:
        member.set_train()
        rng = np.random.default_rng([cfg.seed, m, epoch])
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        order = epoch_sample(cfg.balanced, base_idx, y_np, rng)
        total = 0.0
        for i in iterate(len(order), cfg.batch_size, f"member {m + 1}/{cfg.members} epoch {epoch + 1}", ses.progress):
            idx = order[i:i + cfg.batch_size]
            h = ses.batch_input(idx, rng.integers(0, 8, len(idx)), g)
            y = ses.y_train[torch.from_numpy(idx)].to(ses.device)
            loss = member.loss(h, y, lambda logits, y: head_loss(cfg, logits, y, ses.class_weights),
                               cfg.member_metric_weight, ses.precision)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if average is not None:
                average.update()
            total += float(loss.detach()) * len(idx)
        return total / len(order)

    def validate() -> tuple[dict, float]:
        member.eval()
        with torch.inference_mode():
            logits = torch.cat([member(h) for h in ses.val_inputs()]).float().cpu()
        vm = _metrics(cfg, logits, ses.y_val, ses.val.melanoma, ses.labels.classes, cw)
        return vm, _score(cfg, vm)

    def describe(rec: dict, improved: bool) -> str:
        extra = f", val bal. acc {rec['val_balanced_accuracy']:.4f}" if "val_balanced_accuracy" in rec else ""
        return (f"member {m + 1}/{cfg.members} epoch {rec['epoch']}/{epochs}: train loss {rec['train_loss']:.4f}, "
                f"{'weight average: ' if average is not None else ''}val loss {rec['val_loss']:.4f}, "
                f"val melanoma AUC {rec['val_auc']:.4f}{extra}"
                f"{' (best)' if improved else ''}, {rec['seconds']:.0f} s")

    run = Run(member, opt, sched, files, _member_key(cfg, m, start), epochs,
              name=f"member {m + 1}/{cfg.members}", log=ses.log, average=average,
              record={"precision": resolved_precision(ses.device, ses.precision)},
              # members trained before these settings existed trained as their defaults-of-then
              legacy_key=lambda old: resume_key({"colour": "none", "init_members": "", **old}, PHASE_TWO_FIELDS))
    state = fit(run, train_epoch, validate, describe)
    for rec in state["history"]:
        rec.setdefault("member", m + 1)
    return state


def _load_member_into(net: EnsembleFeatureNet, m: int, member_state: dict[str, torch.Tensor]) -> None:
    target = net.members[m].state_dict()
    backbone = {n[len("backbone."):]: v for n, v in member_state.items() if n.startswith("backbone.")}
    missing = set(target) - set(backbone)
    if missing:
        raise ConfigError(f"member {m}: the checkpoint lacks {sorted(missing)[:5]}: not members of this architecture")
    net.members[m].load_state_dict({n: backbone[n] for n in target}, strict=True)
    net.member_heads[m].load_state_dict({"weight": member_state["head.weight"], "bias": member_state["head.bias"]})


def _train_head(ses: _Session, net: EnsembleFeatureNet, spec: EnsembleSpec, members_state: list[dict]) -> dict:
    """Phase two on the frozen members' pooled vectors (computed once)."""
    cfg, out, device, log, labels, train, val = ses.cfg, ses.out, ses.device, ses.log, ses.labels, ses.train, ses.val
    y_train, y_val, class_weights, pool, n_var, prefix = (ses.y_train, ses.y_val, ses.class_weights, ses.pool,
                                                          ses.n_var, ses.prefix)
    net.eval()
    for p in net.members.parameters():
        p.requires_grad_(False)

    @torch.inference_mode()
    def pooled_of(inputs) -> torch.Tensor:
        rows = []
        for h in inputs:
            k = net.shared_stages
            if k:
                outs = [mb.forward_suffix(h, k, []) for mb in net.members]
            else:
                outs = [mb(h) for mb in net.members]
            rows.append(torch.stack([o.pooled for o in outs], 1).cpu())
        return torch.cat(rows)

    variants = n_var if pool is not None and cfg.head_variants else 1

    def train_inputs():
        for i in range(0, len(train), 256):
            if pool is not None:
                rows = torch.arange(i, min(i + 256, len(train)))[:, None] * n_var + torch.arange(variants)
                yield pool[rows.flatten()].to(device).float()
            else:
                yield prefix.run(train.images[i:i + 256].float() / 255.0)

    val_inputs = ses.val_inputs

    t0 = time.perf_counter()
    # the pooled vectors depend only on the trained members: cached, so phase two can be rerun cheaply
    key = pooled_cache_key(cfg, [state_fingerprint(m) for m in net.members], variants)
    cache_file = out / "members" / f"pooled-{key}.safetensors"
    from_images = cfg.tta > 1 or pool is None    # whole images through the members (test-time views need them)
    if cache_file.is_file():
        cached = load_file(str(cache_file))
        x_tr, x_val = cached["train"].float(), cached["val"].float()
    else:
        if from_images:
            encode = pooled_encoder(net, cfg.normalization, cfg.tta, cfg.image_size, device, out / "members", log)
            x_tr, x_val = encode(train.images, log), encode(val.images, log)
        else:
            x_tr = pooled_of(train_inputs())                    # [N·n_var or N, M, P]
            x_val = pooled_of(val_inputs())
        # stored as fp16; this run uses the stored values too, so a rerun computes exactly the same
        x_tr, x_val = x_tr.half().contiguous(), x_val.half().contiguous()
        atomic_safetensors(cache_file, {"train": x_tr, "val": x_val})
        x_tr, x_val = x_tr.float(), x_val.float()
    y_tr = y_train.repeat_interleave(variants)
    log(f"phase two: pooled vectors of {len(x_tr)} training rows and {len(x_val)} val images "
        f"({time.perf_counter() - t0:.0f} s)")

    # per-member validation figures (their own phase-one heads)
    member_metrics = []
    with torch.inference_mode():
        for m in range(cfg.members):
            lm = net.member_heads[m](x_val[:, m].to(device)).cpu()
            member_metrics.append(_metrics(cfg, lm, y_val, val.melanoma, labels.classes,
                                           None if class_weights is None else class_weights.cpu()))
    labels_tr = np.asarray(train.labels, dtype=object)
    data = HeadData(x_tr, y_tr, x_val, y_val, val.melanoma, labels_tr, np.asarray(val.labels, dtype=object),
                    train.melanoma, np.arange(0, len(x_tr), variants))
    cw = None if class_weights is None else class_weights.cpu()
    best_metrics, history = fit_head(
        net, cfg, data, lambda logits: _metrics(cfg, logits, y_val, val.melanoma, labels.classes, cw),
        lambda vm: _score(cfg, vm), class_weights, device, log)
    metrics = {"val": {"ensemble": best_metrics, "members": member_metrics}, "machine": machine(device, ses.precision)}
    spec = EnsembleSpec(**{**asdict(spec), "metrics": metrics})
    save_ensemble(net.cpu(), spec, out / "ensemble.safetensors")
    phase_one = [rec for st in members_state for rec in st["history"]]
    atomic_json(out / "history.json", phase_one + history)
    log(f"ensemble: val melanoma AUC {best_metrics['auc']:.4f} (members "
        + ", ".join(f"{mm['auc']:.4f}" for mm in member_metrics) + f") -> {out / 'ensemble.safetensors'}")
    return metrics
