"""What the ensemble learns and is judged by: the ``train`` and ``val`` images of a classifier run,
their integer targets, the class weights, the validation figures and the selection score (both
phases use the same)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from ..errors import ConfigError
from ..extract.colour import shades_of_gray_batch
from ..models.ensemble import EnsembleSpec, melanoma_probability
from .config import ClassifierTrainConfig
from .data import LabelledSet, load_labelled
from .head import head_loss

__all__ = ["TrainData", "class_list", "encode_targets"]


def class_list(cfg: ClassifierTrainConfig, train: LabelledSet) -> tuple[str, ...]:
    """The classes the head predicts: ``("melanoma",)``, or the training split's diagnoses, sorted."""
    if cfg.target == "melanoma":
        return ("melanoma",)
    classes = tuple(sorted(set(train.labels)))
    if len(classes) < 2:
        raise ConfigError(f"the diagnosis target needs at least 2 classes, found {classes}")
    return classes


def encode_targets(cfg: ClassifierTrainConfig, classes: tuple[str, ...], data: LabelledSet) -> torch.Tensor:
    """Integer targets of ``data``: 0/1 melanoma, or the index of each label in ``classes``."""
    if cfg.target == "melanoma":
        return torch.from_numpy(data.melanoma.astype(np.int64))
    unknown = sorted(set(data.labels) - set(classes))
    if unknown:
        raise ConfigError(f"labels not seen in training: {unknown}")
    index = {c: i for i, c in enumerate(classes)}
    return torch.tensor([index[v] for v in data.labels], dtype=torch.long)


@dataclass(frozen=True)
class TrainData:
    """The images of both splits (uint8, colour-corrected as the extractor does), their targets and
    ``class_weights`` (diagnosis target with ``class_weights`` set; on the training device)."""
    cfg: ClassifierTrainConfig
    train: LabelledSet
    val: LabelledSet
    classes: tuple[str, ...]
    y_train: torch.Tensor
    y_val: torch.Tensor
    class_weights: torch.Tensor | None

    @classmethod
    def load(cls, cfg: ClassifierTrainConfig, device: torch.device, log: Callable[[str], None]) -> TrainData:
        t0 = time.perf_counter()
        train, val = (load_labelled(cfg.labels, cfg.split, (split,), cfg.image_size, cfg.column, cfg.melanoma_class,
                                    cfg.limit) for split in (cfg.train_split, cfg.val_split))
        if cfg.colour == "shades-of-gray":     # the same correction the extractor applies at index and query time
            train.images = shades_of_gray_batch(train.images)
            val.images = shades_of_gray_batch(val.images)
        classes = class_list(cfg, train)
        y_train, y_val = encode_targets(cfg, classes, train), encode_targets(cfg, classes, val)
        weights = None
        outputs = 1 if cfg.target == "melanoma" else len(classes)
        if cfg.target == "diagnosis" and cfg.class_weights:
            counts = torch.bincount(y_train, minlength=outputs).float().clamp_min(1)
            weights = (counts.sum() / (len(counts) * counts)).to(device)
        log(f"data: {len(train)} train / {len(val)} val images at {cfg.image_size}px, target {cfg.target} "
            f"({outputs} output{'s' if outputs > 1 else ''}), device {device} "
            f"({time.perf_counter() - t0:.0f} s)")
        return cls(cfg, train, val, classes, y_train, y_val, weights)

    @property
    def outputs(self) -> int:
        """The head's output units."""
        return 1 if self.cfg.target == "melanoma" else len(self.classes)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The head's training loss (focal, with the class weights)."""
        return head_loss(self.cfg, logits, y, self.class_weights)

    def val_metrics(self, logits: torch.Tensor) -> dict:
        """Validation figures of the val logits (on the CPU): loss, melanoma AUC (NaN where it cannot be
        computed) and, for the diagnosis target, balanced accuracy."""
        cfg, y, melanoma = self.cfg, self.y_val, self.val.melanoma
        weights = None if self.class_weights is None else self.class_weights.cpu()
        out = {"loss": float(head_loss(cfg, logits, y, weights))}
        p = None
        if cfg.target == "melanoma" or cfg.melanoma_class in self.classes:
            spec = EnsembleSpec(head_outputs=logits.shape[1], classes=self.classes, melanoma_class=cfg.melanoma_class)
            p = melanoma_probability(logits, spec).numpy()
        out["auc"] = float(roc_auc_score(melanoma, p)) if p is not None and 0 < melanoma.sum() < len(melanoma) \
            else float("nan")
        if cfg.target == "diagnosis":
            out["balanced_accuracy"] = float(balanced_accuracy_score(y.numpy(), logits.argmax(1).numpy()))
        return out

    def score(self, metrics: dict) -> float:
        """The model-selection figure: val melanoma AUC, or balanced accuracy for the diagnosis target."""
        v = metrics["balanced_accuracy"] if self.cfg.target == "diagnosis" else metrics["auc"]
        return -math.inf if math.isnan(v) else v
