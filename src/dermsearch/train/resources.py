"""Resource estimates before a long training run: parameters, memory, measured seconds per batch.

``--dry-run`` builds the real model of a training config, runs a few real optimisation steps on
random inputs of the configured batch and image size on the chosen device (with the run's loss and
precision), and extrapolates: :func:`dry_run_classifier`, :func:`dry_run_segmenter`.
"""

from __future__ import annotations

import csv
import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..models.device import resolve_device, runtime_device
from ..models.ensemble import EnsembleSpec, build_ensemble
from ..models.registry import create_backbone
from ..models.segmentation import Segmenter
from ..runtime import Runtime
from . import seeds
from .config import ClassifierTrainConfig, SegTrainConfig
from .data import read_split_map
from .harness import autocast, resolved_precision
from .head import head_loss
from .losses import focal_tversky_loss, metric_loss_module
from .members import Member

__all__ = ["DryRun", "dry_run_steps", "count_rows", "dry_run_classifier", "dry_run_segmenter"]


@dataclass
class DryRun:
    what: str
    device: str
    parameters: int             # the whole model that ships
    trainable: int              # trained in one step of the timed model
    batch_size: int
    image_size: int
    seconds_per_batch: float
    memory_bytes: int           # weights + gradients + AdamW state, plus the measured activation peak
    memory_measured: str        # how the activation part was measured
    batches: int                # in the whole run
    estimated_seconds: float
    precision: str = "fp32"     # the arithmetic of the measured steps (``Runtime.precision`` on that device)
    parts: dict[str, float] = field(default_factory=dict)   # estimated seconds per part; they sum to the estimate

    def to_json(self) -> dict:
        return {**self.__dict__, "estimated_hours": self.estimated_seconds / 3600}

    def describe(self) -> str:
        return (f"{self.what} on {self.device} in {self.precision}: {self.parameters / 1e6:.1f} M parameters "
                f"({self.trainable / 1e6:.1f} M trained per step), batch {self.batch_size} at "
                f"{self.image_size} px: {self.seconds_per_batch:.2f} s per batch (measured), about "
                f"{self.memory_bytes / 2**30:.2f} GiB ({self.memory_measured}); {self.batches} batches in the "
                f"run: about {_human(self.estimated_seconds)}"
                + (" (" + ", ".join(f"{k} {_human(v)}" for k, v in self.parts.items()) + ")"
                   if len(self.parts) > 1 else "") + ".")


def _human(seconds: float) -> str:
    if seconds > 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds > 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 60:.0f} minutes" if seconds >= 90 else f"{seconds:.0f} s"


def split_rows(labels_csv: str | Path, split_csv: str | Path | None, split: str, limit: int = 0) -> list[dict]:
    """The rows of ``split`` (all rows without a split file) in a labels CSV, the first ``limit`` if set."""
    with open(labels_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if split_csv is None and rows and "split" in rows[0]:
        rows = [r for r in rows if r["split"] == split]
    elif split_csv is not None:
        s = read_split_map(split_csv)
        rows = [r for r in rows if s.get(r["image_id"]) == split]
    return rows[:limit] if limit else rows


def count_rows(labels_csv: str | Path, split_csv: str | Path | None, split: str, limit: int = 0) -> int:
    """Rows of ``split`` (all rows without a split file) in a labels CSV."""
    return len(split_rows(labels_csv, split_csv, split, limit))


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # Linux: KiB


def dry_run_steps(model: nn.Module, params: list[nn.Parameter], make_batch, loss_fn, steps: int,
                  device: str) -> tuple[float, int, str]:
    """(seconds per batch, activation-memory estimate in bytes, how it was measured) from real steps."""
    dev = resolve_device(device)
    model.to(dev).train()
    opt = torch.optim.AdamW(params, lr=1e-4)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rss0 = _peak_rss()
    times = []
    for i in range(max(2, steps + 1)):        # the first step warms up and is not timed
        x, y = make_batch(dev)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        loss = loss_fn(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if i:
            times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        mem, how = torch.cuda.max_memory_allocated(dev), "peak CUDA memory allocated, measured"
    else:
        mem, how = max(0, _peak_rss() - rss0), "growth of peak RSS during the steps, measured"
    return sum(times) / len(times), mem, how


def adam_bytes(trainable: int, frozen: int) -> int:
    """fp32 weights of everything + gradients and two AdamW moments of the trained parameters."""
    return 4 * (trainable + frozen) + 12 * trainable


def batches_for(n: int, batch: int, epochs: int, repeats: int = 1) -> int:
    return math.ceil(n / batch) * epochs * repeats


def dry_run_classifier(cfg: ClassifierTrainConfig, steps: int = 3, runtime: Runtime | None = None) -> DryRun:
    """Parameters, memory and measured seconds per batch of ``cfg``'s phase one on its device (a member
    with its head and, when set, its metric loss and proxies for the real classes); nothing is trained."""
    cfg.require_labels()
    rows = split_rows(cfg.labels, cfg.split, cfg.train_split, cfg.limit)
    n = len(rows)
    if rows and cfg.column not in rows[0]:
        raise ConfigError(f"{cfg.labels}: no {cfg.column!r} column (the label column of target {cfg.target!r})")
    classes = 1 if cfg.target == "melanoma" else max(2, len({r[cfg.column].strip() for r in rows}))
    k, b, s = cfg.shared_stages, cfg.batch_size, cfg.image_size
    spec = EnsembleSpec(backbone=cfg.backbone, members=cfg.members, shared_stages=k, feature_dim=cfg.feature_dim,
                        head_outputs=classes, member_heads=True)
    total = sum(p.numel() for p in build_ensemble(spec).parameters())
    seeds.seed_torch(cfg.seed)
    backbone = create_backbone(cfg.backbone)
    backbone.classifier = None
    member = Member(backbone, k, classes, cfg.dropout,
                     metric_loss_module(cfg.member_metric_loss, max(classes, 2), backbone.pooled_dim,
                                        cfg.metric_temperature))
    trainable = member.trainable() + member.metric_parameters()
    n_trained = sum(p.numel() for p in trainable)
    runtime = runtime or Runtime()
    device, precision = runtime_device(runtime), runtime.precision
    with torch.no_grad():
        shape = backbone.forward_prefix(torch.zeros(1, 3, s, s), k)[0].shape[1:] if k else (3, s, s)

    def make_batch(dev):
        y = ((torch.rand(b, device=dev) < 0.2).float() if cfg.target == "melanoma"
             else torch.randint(0, classes, (b,), device=dev))
        return torch.randn(b, *shape, device=dev), y

    def loss_fn(model, x, y):   # phase one's own loss (with its metric loss, when set) and precision
        return model.loss(x, y, lambda logits, y: head_loss(cfg, logits, y, None), cfg.member_metric_weight,
                          precision)

    per_batch, act, how = dry_run_steps(member, trainable, make_batch, loss_fn, steps, str(device))
    if cfg.member_ema:   # the average of a member's weights and the copy each swap makes
        act += 2 * 4 * sum(t.numel() for t in member.state_dict().values())
    batches = sum(batches_for(n, b, cfg.member_epochs(m)) for m in range(cfg.members))
    parts = {"phase one": per_batch * batches}
    if k:   # the frozen shared stages: once per (image, variant) when cached, else on every batch
        x = torch.randn(b, 3, s, s, device=device)
        prefix_s = _forward_seconds(lambda: backbone.forward_prefix(x, k), backbone, device)
        cached = cfg.augment != "online"
        parts["frozen stages"] = prefix_s * (math.ceil(n * (8 if cfg.augment == "x7" else 1) / b) if cached
                                             else batches)
    n_val = count_rows(cfg.labels, cfg.split, cfg.val_split, cfg.limit)
    member_epochs = sum(cfg.member_epochs(m) for m in range(cfg.members))
    x_val, _ = make_batch(device)
    parts["validation"] = _forward_seconds(lambda: member(x_val), member, device) / b * n_val * member_epochs
    parts["phase two"] = _pooled_seconds_per_image(build_ensemble(spec), cfg, device) * (n + n_val)
    return DryRun(f"train classifier ({cfg.members} x {cfg.backbone}, {cfg.trainable_stages} trained stages)",
                  str(device), total, n_trained, b, s, per_batch, adam_bytes(n_trained, total - n_trained) + act, how,
                  batches, sum(parts.values()), resolved_precision(device, precision), parts)


def _forward_seconds(forward, model: nn.Module, device) -> float:
    """Seconds of one ``forward()`` of ``model`` in eval mode without gradients, in float32 (as
    validation and the frozen stages run), after one untimed warm-up call."""
    model.to(device).eval()
    with torch.no_grad():
        forward()
        _sync(device)
        t0 = time.perf_counter()
        forward()
        _sync(device)
        return time.perf_counter() - t0


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _pooled_seconds_per_image(net: nn.Module, cfg: ClassifierTrainConfig, device: torch.device) -> float:
    """Phase two's main cost, measured with its own encoder (ONNX Runtime on a CPU): the members'
    pooled vectors of one image in all ``cfg.tta`` views, times ``train`` + ``val`` by the caller.
    With one view and cached frozen stages phase two reads the cache instead: cheaper per row, but
    with ``head_variants`` it encodes all 8 rows of each training image, which this leaves out. Its
    head epochs (seconds on the pooled vectors) are left out too."""
    import tempfile

    from .head import pooled_encoder

    s, quiet = cfg.image_size, (lambda *_: None)
    images = torch.randint(0, 256, (8, 3, s, s), dtype=torch.uint8)
    with tempfile.TemporaryDirectory() as d:
        encode = pooled_encoder(net.eval(), cfg.normalization, cfg.tta, s, device, Path(d), quiet)
        encode(images[:2], quiet)                       # warm-up (and, on a CPU, the one-off export before it)
        t0 = time.perf_counter()
        encode(images, quiet)
        return (time.perf_counter() - t0) / len(images)


def dry_run_segmenter(cfg: SegTrainConfig, steps: int = 3, runtime: Runtime | None = None) -> DryRun:
    """Parameters, memory and measured seconds per batch of ``cfg`` on its device; nothing is trained."""
    cfg.require_labels()
    n = count_rows(cfg.labels, cfg.split, cfg.train_split, cfg.limit)
    seeds.seed_torch(cfg.seed)
    model = Segmenter(cfg.segmenter_config())
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    b, s = cfg.batch_size, cfg.image_size
    runtime = runtime or Runtime()
    precision = runtime.precision

    def make_batch(dev):
        return torch.randn(b, 3, s, s, device=dev), (torch.rand(b, 1, s, s, device=dev) < 0.3).float()

    def loss_fn(m, x, y):   # as a training step: the network under the run's autocast, the loss in float32
        with autocast(x.device, precision):
            logits = m(x)
        return focal_tversky_loss(logits.float(), y, cfg.alpha, cfg.beta, cfg.gamma)

    device = str(runtime_device(runtime))
    per_batch, act, how = dry_run_steps(model, params, make_batch, loss_fn, steps, device)
    batches = batches_for(n, b, cfg.epochs)
    return DryRun(f"train segmenter ({cfg.arch}, width {cfg.width})", device, total, total, b, s, per_batch,
                  adam_bytes(total, 0) + act, how, batches, per_batch * batches,
                  resolved_precision(torch.device(device), precision), {"training": per_batch * batches})
