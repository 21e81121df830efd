"""``dermsearch train segmenter``: focal-Tversky training of U-Net / RU-Net / R2U-Net.

The checkpoint with the best validation Dice is kept (``best.safetensors`` + ``config.json``);
``last.safetensors`` + ``state.safetensors`` + ``state.json`` let an interrupted run resume.
Every run writes its resolved config and per-epoch history beside the weights.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from ..evaluate.masks import dice_scores
from ..models.device import runtime_device
from ..models.segmentation import Segmenter
from ..runtime import Runtime
from . import seeds
from .augment import Augmenter
from .config import SegTrainConfig
from .data import PairSet, load_pairs
from .harness import Run, RunFiles, atomic_json, autocast, fit, iterate, resolved_precision, resume_key
from .losses import focal_tversky_loss

__all__ = ["SegTrainConfig", "train_segmenter", "SEG_MEAN", "SEG_STD"]

SEG_MEAN, SEG_STD = 0.5, 0.25   # inputs: (x/255 − 0.5) / 0.25


def _normalise(images_u8: torch.Tensor) -> torch.Tensor:
    return (images_u8.float() / 255.0 - SEG_MEAN) / SEG_STD


def _config_dict(cfg: SegTrainConfig) -> dict:
    return json.loads(json.dumps(asdict(cfg)))


def _evaluate(model: Segmenter, data: PairSet, cfg: SegTrainConfig, device) -> tuple[float, float]:
    model.eval()
    losses, dices = [], []
    with torch.inference_mode():
        for i in range(0, len(data), 64):
            x = _normalise(data.images[i:i + 64].to(device))
            y = data.masks[i:i + 64].to(device)
            logits = model(x)
            losses.append(float(focal_tversky_loss(logits, y, cfg.alpha, cfg.beta, cfg.gamma)) * len(x))
            dices.append(dice_scores(logits > 0, y).cpu())
    return sum(losses) / len(data), float(torch.cat(dices).mean())


def train_segmenter(cfg: SegTrainConfig, out_dir: str | Path,
                    log: Callable[[str], None] = print, progress: bool = True, runtime: Runtime | None = None) -> dict:
    """Train; returns the history. Resumes from ``out_dir`` when a matching run stopped there,
    whatever ``runtime`` (device, threads, precision) either ran on."""
    cfg.require_labels()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runtime = runtime or Runtime()
    device, precision = runtime_device(runtime), runtime.precision
    seeds.seed_torch(cfg.seed)
    t_load = time.perf_counter()
    train = load_pairs(cfg.labels, cfg.split, (cfg.train_split,), cfg.image_size, cfg.limit)
    val = load_pairs(cfg.labels, cfg.split, (cfg.val_split,), cfg.image_size, cfg.limit)
    log(f"data: {len(train)} train / {len(val)} val pairs at {cfg.image_size}px "
        f"({time.perf_counter() - t_load:.1f} s); device {device}")

    model = Segmenter(cfg.segmenter_config()).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    augment = Augmenter(cfg.augment_config) if cfg.augment else None
    info = {"model": cfg.segmenter_config().to_dict(), "train": _config_dict(cfg), "input": {
        "size": cfg.image_size, "mean": SEG_MEAN, "std": SEG_STD, "scale": "x/255"}}
    atomic_json(out / "config.json", info)

    def train_epoch(epoch: int) -> float:
        model.train()
        g = seeds.segmenter_epoch_generator(cfg.seed, epoch)
        order = torch.randperm(len(train), generator=g)
        total = 0.0
        for i in iterate(len(train), cfg.batch_size, f"epoch {epoch + 1}/{cfg.epochs}", progress):
            idx = order[i:i + cfg.batch_size]
            x = train.images[idx].to(device).float() / 255.0
            y = train.masks[idx].to(device).float()
            if augment is not None:
                x, y = augment(x, y)
                y = (y > 0.5).float()
            with autocast(device, precision):
                logits = model((x - SEG_MEAN) / SEG_STD)
            loss = focal_tversky_loss(logits.float(), y, cfg.alpha, cfg.beta, cfg.gamma)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        return total / len(train)

    def validate() -> tuple[dict, float]:
        loss, dice = _evaluate(model, val, cfg, device)
        return {"loss": loss, "dice": dice}, dice

    def describe(rec: dict, improved: bool) -> str:
        return (f"epoch {rec['epoch']}/{cfg.epochs}: train loss {rec['train_loss']:.4f}, val loss "
                f"{rec['val_loss']:.4f}, val Dice {rec['val_dice']:.4f}{' (best)' if improved else ''}, "
                f"{rec['seconds']:.1f} s")

    run = Run(model, opt, sched, RunFiles(out), resume_key(_config_dict(cfg)), cfg.epochs, log=log,
              best_metadata=lambda rec: {"segmenter": json.dumps({**info, "epoch": rec["epoch"],
                                                                  "val_dice": rec["val_dice"]})},
              last_metadata={"segmenter": json.dumps(info)},
              record={"precision": resolved_precision(device, precision)},
              after_epoch=lambda state: atomic_json(out / "history.json", state["history"]))
    state = fit(run, train_epoch, validate, describe)
    history, best = state["history"], state["best"]
    atomic_json(out / "history.json", history)
    return {"history": history, "best_val_dice": best}
