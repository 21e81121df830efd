"""Labelled data sets decoded once into uint8 tensors: (image, mask) pairs and (image, label) sets.

Images are resized exactly as the extractor resizes them (``resize_rgb``; the extractor's optional
``max_side`` cap, off by default, is not applied here), so training, indexing and evaluation see the
same pixels; masks are resized with nearest-neighbour (HAM10000's are
600x450 for 200x150 images). Used by the trainers and by the classifier and mask evaluations.
"""

from __future__ import annotations

import csv
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError
from ..labels import is_melanoma_name, melanoma_status, read_split
from .images import load_image, resize_rgb
from .masks import resize_mask

__all__ = ["PairSet", "load_pairs", "read_pairs", "read_split_map", "LabelledSet", "load_labelled", "load_pair"]


@dataclass
class PairSet:
    ids: list[str]
    images: torch.Tensor   # [N, 3, S, S] uint8
    masks: torch.Tensor    # [N, 1, S, S] uint8 (0/1)

    def __len__(self) -> int:
        return len(self.ids)


def read_split_map(split_csv: str | Path | None) -> dict[str, str] | None:
    """image_id -> split name from an ``image_id,split`` CSV (:func:`dermsearch.labels.read_split`,
    the package's one split reader); None without one."""
    return None if split_csv is None else read_split(split_csv)


def _require_columns(path, reader: csv.DictReader, columns) -> None:
    missing = [c for c in columns if c not in (reader.fieldnames or ())]
    if missing:
        raise ConfigError(f"{path}: no column {', '.join(missing)} (columns: {reader.fieldnames})")


def read_pairs(labels_csv: str | Path, split_csv: str | Path | None = None,
               splits: tuple[str, ...] | None = None) -> list[tuple[str, Path, Path]]:
    """(id, image path, mask path) for rows with a mask, restricted to ``splits``."""
    labels_csv = Path(labels_csv)
    split = read_split_map(split_csv)
    out = []
    with open(labels_csv, newline="") as f:
        reader = csv.DictReader(f)
        _require_columns(labels_csv, reader, ("image_id", "image_path"))
        for r in reader:
            if not r.get("mask_path"):
                continue
            if splits is not None and (split or {}).get(r["image_id"], r.get("split")) not in splits:
                continue
            out.append((r["image_id"], labels_csv.parent / r["image_path"], labels_csv.parent / r["mask_path"]))
    return out


def load_pair(item: tuple[str, Path, Path], size: int) -> tuple[np.ndarray, np.ndarray]:
    _, img_path, mask_path = item
    rgb = resize_rgb(load_image(img_path), size)
    with Image.open(mask_path) as m:
        mask = resize_mask(np.asarray(m.convert("L")) > 127, size)
    return rgb, mask


def load_pairs(labels_csv, split_csv=None, splits=None, size: int = 128, limit: int = 0, threads: int = 4) -> PairSet:
    items = read_pairs(labels_csv, split_csv, splits)
    if limit:
        items = items[:limit]
    if not items:
        raise ConfigError(f"{labels_csv}: no image/mask pairs for splits {splits}")
    with ThreadPoolExecutor(threads) as pool:
        loaded = list(pool.map(lambda it: load_pair(it, size), items))
    images = torch.from_numpy(np.stack([a for a, _ in loaded])).permute(0, 3, 1, 2).contiguous()
    masks = torch.from_numpy(np.stack([m for _, m in loaded]).astype(np.uint8))[:, None]
    return PairSet([i for i, _, _ in items], images, masks)


@dataclass
class LabelledSet:
    """Images of one or more splits with their label strings and melanoma flags."""

    ids: list[str]
    images: torch.Tensor     # [N, 3, S, S] uint8
    labels: list[str]        # the label column's values
    melanoma: np.ndarray     # [N] 0/1 (from the ``melanoma`` column, else diagnosis == melanoma class)

    def __len__(self) -> int:
        return len(self.ids)


def _melanoma(row: dict[str, str], label_column: str, melanoma_class: str) -> int | None:
    """The package's one melanoma rule (:func:`dermsearch.labels.melanoma_status`): the ``melanoma``
    column when the row has one, else the label (``melanoma_class`` counts as a melanoma name too);
    None when the row does not say (e.g. diagnosis ``unknown``)."""
    label = (row.get(label_column) or "").strip()
    if not (row.get("melanoma") or "").strip() and label == melanoma_class and not is_melanoma_name(label):
        return 1
    try:
        return melanoma_status(row.get("melanoma"), [label])
    except ValueError as e:          # a melanoma value that is not 0/1: the file must be fixed
        raise ConfigError(f"image {row.get('image_id')!r}: {e}") from None


def load_labelled(labels_csv, split_csv=None, splits=None, size: int = 224, label_column: str = "melanoma",
                  melanoma_class: str = "mel", limit: int = 0, threads: int = 4) -> LabelledSet:
    """Decode the images of ``splits`` (all rows when no split is given) at ``size`` x ``size``.

    Images are resized exactly as the extractor resizes them (without its optional ``max_side`` cap),
    so training and indexing agree."""
    labels_csv = Path(labels_csv)
    split = read_split_map(split_csv)
    rows = []
    with open(labels_csv, newline="") as f:
        reader = csv.DictReader(f)
        _require_columns(labels_csv, reader, ("image_id", "image_path"))
        if label_column not in (reader.fieldnames or []):
            raise ConfigError(f"{labels_csv}: no column {label_column!r} (columns: {reader.fieldnames})")
        for r in reader:
            if splits is not None:
                s = (split or {}).get(r["image_id"], r.get("split"))
                if s not in splits:
                    continue
            rows.append(r)
    if limit:
        rows = rows[:limit]
    if not rows:
        raise ConfigError(f"{labels_csv}: no rows for splits {splits}")
    status = [_melanoma(r, label_column, melanoma_class) for r in rows]
    unknown = [r["image_id"] for r, m in zip(rows, status) if m is None]
    if unknown:                      # rows that say nothing about melanoma are left out, and said so
        warnings.warn(f"{labels_csv}: {len(unknown)} row(s) left out, their melanoma status unknown "
                      f"(e.g. {', '.join(unknown[:3])}); give them a 0/1 melanoma column to use them", stacklevel=2)
        rows = [r for r, m in zip(rows, status) if m is not None]
        status = [m for m in status if m is not None]
        if not rows:
            raise ConfigError(f"{labels_csv}: no row with a known melanoma status")
    mel = np.array(status, dtype=np.int64)
    with ThreadPoolExecutor(threads) as pool:
        arrays = list(pool.map(lambda r: resize_rgb(load_image(labels_csv.parent / r["image_path"]), size), rows))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return LabelledSet([r["image_id"] for r in rows], images, [r[label_column].strip() for r in rows], mel)
