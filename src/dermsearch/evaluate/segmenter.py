"""How well segmenters find the lesion: Dice and Jaccard of each against ground-truth masks."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..extract.datasets import load_pairs
from ..models.baseline_segmenter import OtsuSegmenter
from ..models.device import runtime_device
from ..models.learned_segmenter import default_segmenter_path, load_segmenter, predict_masks
from .masks import evaluate_masks
from .metrics import bootstrap_ci

__all__ = ["compare_segmenters"]


def compare_segmenters(labels_csv, split_csv, splits, image_size: int, names, rounds: int = 1000,
                       runtime=None) -> dict:
    """Dice (mean, median, lesion-free 95% bootstrap CI) and Jaccard of each named segmenter
    (``default``: the packaged one, ``otsu``, a run directory or a .safetensors file) against the
    ground-truth masks of ``labels_csv``, all at ``image_size`` (masks: nearest neighbour). The
    networks run on ``runtime``'s device and threads (default ``Runtime()``)."""
    device = runtime_device(runtime)
    data = load_pairs(labels_csv, split_csv, tuple(splits) if splits else None, image_size)
    rows = {}
    for name in names:
        if name == "otsu":
            pred = torch.from_numpy(OtsuSegmenter().segment_batch(data.images.permute(0, 2, 3, 1).numpy()))[:, None]
        else:
            model, info = load_segmenter(default_segmenter_path() if name == "default" else name)
            if model.multiple and image_size % model.multiple:
                raise ConfigError(f"segmenter {name}: the image size must be a multiple of {model.multiple}")
            pred = predict_masks(model.to(device), info, data.images)
        rows[name], dice = evaluate_masks(pred, data.masks)
        rows[name]["dice_ci95"] = list(bootstrap_ci(lambda i, d=dice: d[i].mean(), len(dice), rounds, seed=0))
    return rows
