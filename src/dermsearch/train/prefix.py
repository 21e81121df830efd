"""The frozen shared stages of an ensemble (stem + the first k stages) and the cache of their outputs.

With ``trainable_stages`` < 7 every member shares these stages, so their outputs for every training
image (and each of its x7 variants) are computed once, stored as fp16 (resumable, atomic) and reused
by every member and epoch: what makes training on a CPU feasible.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ..extract.datasets import LabelledSet
from ..io import replace_file
from ..models.efficientnet import Backbone
from ..models.normalization import NORMALISATIONS
from . import seeds
from .augment import x7_variant
from .harness import atomic_json, iterate

__all__ = ["normaliser", "FrozenPrefix"]


def normaliser(normalization: str, device):
    mean, std = NORMALISATIONS[normalization]
    mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return lambda unit: (unit * 255.0 - mean) / std      # [0, 1] images -> network input


class FrozenPrefix:
    """The frozen shared stages (stem + the first k stages) and their cached outputs; ``cfg`` is the
    training config (its normalisation, augmentation and seed)."""

    def __init__(self, base: Backbone, k: int, cfg, device):
        self.base, self.k, self.cfg, self.device = base, k, cfg, device
        self.normalise = normaliser(cfg.normalization, device)

    @torch.no_grad()
    def run(self, unit: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] in [0, 1] -> stage-k output (or the normalised images when k = 0)."""
        x = self.normalise(unit.to(self.device))
        if self.k == 0:
            return x
        return self.base.forward_prefix(x, self.k)[0]

    def variants(self, images_u8: torch.Tensor, variant: int, generator: torch.Generator) -> torch.Tensor:
        unit = images_u8.float() / 255.0
        return x7_variant(unit, variant, self.cfg.augment_config, generator, self.cfg.scale_jitter, self.cfg.vignette,
                          self.cfg.hair, self.cfg.illuminant)

    def cache(self, data: LabelledSet, n_variants: int, path: Path, log, progress: bool,
              batch: int = 16) -> torch.Tensor:
        """Outputs for every (image, variant), row i * n_variants + v; resumable via ``path``."""
        n = len(data)
        rows = n * n_variants
        probe = self.run(data.images[:1].float() / 255.0)
        shape = (rows, *probe.shape[1:])
        done_path = path.with_name(path.name + ".done")
        if path.is_file() and not done_path.exists():
            mm = np.load(path, mmap_mode="r")
            if mm.shape == shape:
                log(f"prefix cache: reusing {path.name} ({rows} rows)")
                return torch.from_numpy(np.array(mm))
        partial = path.with_name(path.name + ".partial")
        start = 0
        if partial.is_file() and done_path.is_file():
            mm = np.lib.format.open_memmap(partial, mode="r+")
            start = json.loads(done_path.read_text())["images"] if mm.shape == shape else 0
            if mm.shape != shape:
                mm = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=shape)
        else:
            mm = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=shape)
        if start:
            log(f"prefix cache: resuming at image {start}/{n}")
        t0 = time.perf_counter()
        for i in iterate(n - start, batch, f"caching stage-{self.k} outputs x{n_variants}", progress):
            lo = start + i
            hi = min(lo + batch, n)
            for v in range(n_variants):
                g = seeds.prefix_variant_generator(self.cfg.seed, lo, v)
                out = self.run(self.variants(data.images[lo:hi], v, g)).half().cpu().numpy()
                mm[np.arange(lo, hi) * n_variants + v] = out
            if (hi // batch) % 32 == 0 or hi == n:
                mm.flush()
                atomic_json(done_path, {"images": hi})
        mm.flush()
        del mm
        replace_file(partial, path)
        done_path.unlink(missing_ok=True)
        log(f"prefix cache: {rows} rows {tuple(shape[1:])} in {time.perf_counter() - t0:.0f} s")
        return torch.from_numpy(np.load(path))
