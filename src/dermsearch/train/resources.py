"""Resource estimates before a long training run: parameters, memory, measured seconds per batch.

``--dry-run`` builds the real model of a training config, runs a few real optimisation steps on
random inputs of the configured batch and image size on the chosen device, and extrapolates.
"""

from __future__ import annotations

import csv
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..models.device import resolve_device
from .data import read_split_map

__all__ = ["DryRun", "dry_run_steps", "count_rows"]


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

    def to_json(self) -> dict:
        return {**self.__dict__, "estimated_hours": self.estimated_seconds / 3600}

    def describe(self) -> str:
        est = self.estimated_seconds
        human = f"{est / 86400:.1f} days" if est > 2 * 86400 else f"{est / 3600:.1f} hours" if est > 3600 \
            else f"{est / 60:.0f} minutes"
        return (f"{self.what} on {self.device}: {self.parameters / 1e6:.1f} M parameters "
                f"({self.trainable / 1e6:.1f} M trained per step), batch {self.batch_size} at "
                f"{self.image_size} px: {self.seconds_per_batch:.2f} s per batch (measured), about "
                f"{self.memory_bytes / 2**30:.2f} GiB ({self.memory_measured}); {self.batches} batches in the "
                f"run: about {human}.")


def count_rows(labels_csv: str | Path, split_csv: str | Path | None, split: str, limit: int = 0) -> int:
    """Rows of ``split`` (all rows without a split file) in a labels CSV."""
    with open(labels_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    ids = [r["image_id"] for r in rows]
    if split_csv is None and rows and "split" in rows[0]:
        ids = [r["image_id"] for r in rows if r["split"] == split]
    elif split_csv is not None:
        s = read_split_map(split_csv)
        ids = [i for i in ids if s.get(i) == split]
    return min(len(ids), limit) if limit else len(ids)


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
