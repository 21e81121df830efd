"""How the images of a classifier run reach the members: through the frozen shared stages, from
their cache where there is one, augmented as the config says (x7 variants, online draws or none)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .augment import Augmenter
from .config import ClassifierTrainConfig
from .prefix import FrozenPrefix
from .targets import TrainData

__all__ = ["MemberInputs", "RunContext", "fingerprint"]


def fingerprint(*parts) -> str:
    """A short hash of JSON-able ``parts``: the name of a cache computed from them."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class MemberInputs:
    """The members' inputs. ``pool``: the cached stage-k outputs of every (training image, variant),
    row ``i * n_variants + v`` (None without shared stages, with online augmentation or when phase
    one is skipped); ``val_pool``: the same of the val images (one variant)."""
    cfg: ClassifierTrainConfig
    data: TrainData
    prefix: FrozenPrefix
    pool: torch.Tensor | None
    val_pool: torch.Tensor | None
    n_variants: int
    augmenter: Augmenter | None

    @classmethod
    def prepare(cls, prefix: FrozenPrefix, data: TrainData, cache: Path, reused: bool,
                log: Callable[[str], None], progress: bool) -> MemberInputs:
        """Compute (or reuse) the caches in ``cache``; ``reused``: the members come from another ensemble
        (no phase one to feed; phase two encodes whole images)."""
        cfg, k = data.cfg, prefix.k
        parts = (cfg.labels, cfg.split, cfg.limit, cfg.backbone, cfg.weights, k, cfg.image_size,
                 asdict(cfg.augment_config), cfg.seed, *([cfg.colour] if cfg.colour != "none" else []))
        key = fingerprint(*parts)      # val holds the originals only: its outputs never depend on the zoom
        extra = ([f"zoom {cfg.scale_jitter}"] if cfg.scale_jitter else []) + (
            [f"vignette {cfg.vignette} hair {cfg.hair}"] if cfg.vignette or cfg.hair else []) + (
            [f"illuminant {cfg.illuminant}"] if cfg.illuminant else [])
        train_key = fingerprint(*parts, *extra) if extra else key
        n_var = 8 if cfg.augment == "x7" else 1
        cached = k > 0 and cfg.augment != "online" and not reused
        pool = prefix.cache(data.train, n_var, cache / f"train-{cfg.train_split}-x{n_var}-{train_key}.npy", log,
                            progress) if cached else None
        val_pool = (prefix.cache(data.val, 1, cache / f"val-{cfg.val_split}-{key}.npy", log, progress)
                    if k and not reused else None)
        augmenter = (Augmenter(cfg.augment_config, cfg.scale_jitter, cfg.vignette, cfg.hair, cfg.illuminant)
                     if cfg.augment == "online" else None)
        return cls(cfg, data, prefix, pool, val_pool, n_var, augmenter)

    @property
    def device(self) -> torch.device:
        return self.prefix.device

    def batch(self, idx: np.ndarray, variants: np.ndarray, g: torch.Generator) -> torch.Tensor:
        """Phase one's input for training images ``idx``, each in its drawn x7 ``variants``
        (augmented online with ``g`` instead, when so configured)."""
        if self.pool is not None:
            return self.pool[torch.from_numpy(idx * self.n_variants + variants)].to(self.device).float()
        images = self.data.train.images[torch.from_numpy(idx)]
        if self.n_variants == 8 and self.augmenter is None:     # the variants the cache would hold
            unit = torch.cat([self.prefix.variants(images[j:j + 1], int(v), g) for j, v in enumerate(variants)])
        else:
            unit = images.float() / 255.0
            if self.augmenter is not None:
                unit = self.augmenter(unit.to(self.device), generator=g)
        return self.prefix.run(unit).float() if self.prefix.k else self.prefix.normalise(unit.to(self.device))

    def val_batches(self) -> Iterator[torch.Tensor]:
        """The val images' inputs in batches of 128, in order."""
        val = self.data.val
        for i in range(0, len(val), 128):
            if self.val_pool is not None:
                yield self.val_pool[i:i + 128].to(self.device).float()
            else:
                yield self.prefix.normalise(val.images[i:i + 128].to(self.device).float() / 255.0)

    def head_variants(self) -> int:
        """Rows per training image that phase two trains on: all x7 variants with ``head_variants``
        (from the cache), else the original only."""
        return self.n_variants if self.pool is not None and self.cfg.head_variants else 1

    def train_batches(self) -> Iterator[torch.Tensor]:
        """Phase two's training inputs in batches of 256 images, each in :meth:`head_variants` rows."""
        train, variants = self.data.train, self.head_variants()
        for i in range(0, len(train), 256):
            if self.pool is not None:
                rows = torch.arange(i, min(i + 256, len(train)))[:, None] * self.n_variants + torch.arange(variants)
                yield self.pool[rows.flatten()].to(self.device).float()
            else:
                yield self.prefix.run(train.images[i:i + 256].float() / 255.0)


@dataclass(frozen=True)
class RunContext:
    """What both phases of one run share: its directory, its arithmetic (``Runtime.precision``),
    the members' inputs (and through them the config and the data), the log and progress bars."""
    out: Path
    precision: str
    inputs: MemberInputs
    log: Callable[[str], None]
    progress: bool

    @property
    def cfg(self) -> ClassifierTrainConfig:
        return self.inputs.cfg

    @property
    def data(self) -> TrainData:
        return self.inputs.data

    @property
    def device(self) -> torch.device:
        return self.inputs.device
