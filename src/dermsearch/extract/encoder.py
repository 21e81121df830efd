"""Encoding images with an index's model from its cached ONNX export, without torch.

A search from the command line encodes one query image. Importing torch and building the
networks costs more than everything else such a call does, so when the export of the index's
model is in the cache (``dermsearch index`` writes it when it runs on ONNX Runtime, the default on
CPU) :class:`OnnxEncoder` runs the export with ONNX Runtime and does the rest (resizing, colour
constancy, mask packing) in numpy: the same steps as :class:`~dermsearch.extract.Extractor`, which
calls the same functions below.

The export is keyed by the model fingerprint the index records, so it is the index's own model
(networks, Gram layer weights, test-time views and segmenter are all inside the graphs).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from ..errors import ConfigError
from .colour import apply_colour
from .config import PREPROCESS_VERSION
from .fov import field_of_view
from .images import cap_side, resize_rgb
from .masks import pack_masks, resize_mask
from .ort import OnnxRuntimeBackend, export_directory, onnx_available
from .vectors import Vectors

__all__ = ["OnnxEncoder", "cached_encoder", "Prepared", "prepare_image", "stack_fields", "finish_masks",
           "pool_masks", "cuda_possible"]


class Prepared(NamedTuple):
    """One image made ready for the networks."""

    pixels: np.ndarray                 # [S, S, 3] uint8 at the model's size, colour-corrected
    segmenter: np.ndarray | None       # [s, s, 3] uint8 at the segmenter's size (uncorrected), or None
    field: np.ndarray | None           # [S, S] bool field of view (extract/fov.py), or None


def prepare_image(image: Image.Image, image_size: int, colour: str, segmenter_size: int | None,
                  fov: bool = False, max_side: int = 0) -> Prepared:
    """The image at the model's size (colour-corrected), at the segmenter's size, and its field of
    view when ``fov``. The segmenter and the field see the uncorrected image. With ``max_side``, an
    image whose long side is larger is first reduced to it (:func:`~.images.cap_side`)."""
    image = cap_side(image, max_side)
    raw = resize_rgb(image, image_size)
    pixels = apply_colour(raw, colour)
    seg = None
    if segmenter_size is not None:
        seg = raw if segmenter_size == image_size else resize_rgb(image, segmenter_size)
    return Prepared(pixels, seg, field_of_view(raw) if fov else None)


def stack_fields(prepared: list[Prepared]) -> np.ndarray | None:
    """The batch's fields of view as [B, 1, S, S] float32 0/1, or None when they were not computed."""
    present = {p.field is not None for p in prepared}
    if present != {True}:
        if True in present:
            raise ConfigError("some images of the batch were prepared with a field of view and some without: "
                              "prepare them all with the same Extractor.prepare")
        return None
    return np.stack([p.field for p in prepared])[:, None].astype(np.float32)


def finish_masks(raw: np.ndarray, mask_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The segmenter's boolean masks [B, s, s] -> (bit-packed masks at ``mask_size``, areas)."""
    masks = np.stack([m if m.shape == (mask_size, mask_size) else resize_mask(m, mask_size) for m in raw])
    return pack_masks(masks), masks.reshape(len(raw), -1).sum(1).astype(np.int32)


def pool_masks(raw: np.ndarray, image_size: int) -> np.ndarray:
    """The segmenter's masks [B, s, s] as 0/1 float32 [B, 1, S, S] at the model's input size
    (nearest neighbour), for lesion-aware Gram pooling."""
    out = np.stack([m if m.shape == (image_size, image_size) else resize_mask(m, image_size) for m in raw])
    return out[:, None].astype(np.float32)


def cuda_possible() -> bool:
    """Whether 'auto' might mean a CUDA device, decided without importing torch when it is not
    loaded yet: no NVIDIA driver, no CUDA."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return bool(torch.cuda.is_available())
    return Path("/proc/driver/nvidia/gpus").is_dir() or Path("/dev/nvidia0").exists()


class OnnxEncoder:
    """Extracts images with a cached ONNX export of an index's model (CPU, ONNX Runtime)."""

    def __init__(self, directory: Path, config: dict, threads: int | None = None):
        self.ort = OnnxRuntimeBackend(directory, threads, "cpu")
        self.config = config
        self.fingerprint = self.ort.info["fingerprint"]
        self._otsu = None
        seg = self.ort.info.get("segmenter")
        if not config["masks"]:
            self.segmenter_size = None
        elif seg:
            self.segmenter_size = int(seg["input_size"])
        elif config["segmenter"] == "otsu":
            from ..models.baseline_segmenter import OtsuSegmenter

            self._otsu = OtsuSegmenter()
            self.segmenter_size = int(config["mask_size"])
        else:
            raise ConfigError(f"{directory}: the export holds no segmenter for {config['segmenter']!r}")

    def extract(self, images: list[Image.Image]) -> Vectors:
        if not images:
            raise ConfigError("no images to extract")
        cfg = self.config
        prepared = [prepare_image(img, cfg["image_size"], cfg.get("colour", "none"), self.segmenter_size,
                                  cfg.get("fov", False), cfg.get("max_side", 0)) for img in images]
        pixels = np.stack([p[0] for p in prepared])
        masks = areas = pool = None
        if self.segmenter_size is not None:
            seg_in = np.stack([p[1] for p in prepared])
            raw = self._otsu.segment_batch(seg_in) if self._otsu is not None else self.ort.segment(seg_in)
            masks, areas = finish_masks(raw, cfg["mask_size"])
            if cfg["style"] and cfg.get("gram_pool", "image") != "image":
                pool = pool_masks(raw, cfg["image_size"])
        features, styles = self.ort.features(pixels, pool, stack_fields(prepared))
        return Vectors(np.ascontiguousarray(features, dtype=np.float32), styles, masks, areas)


def cached_encoder(manifest: dict, device: str = "auto", threads: int | None = None) -> OnnxEncoder | None:
    """An :class:`OnnxEncoder` for the index whose manifest this is, when its model's export is
    cached, ONNX Runtime is installed and the queries run on the CPU; else None (build an
    :class:`~dermsearch.extract.Extractor`). ``DERMSEARCH_NO_CACHED_ENCODER=1`` disables it."""
    if os.environ.get("DERMSEARCH_NO_CACHED_ENCODER") == "1":
        return None
    if device != "cpu" and (device != "auto" or cuda_possible()):
        return None
    directory = export_directory(manifest["fingerprint"])
    try:
        info = json.loads((directory / "onnx.json").read_text())
    except (OSError, ValueError):
        return None
    if (info.get("fingerprint") != manifest["fingerprint"] or info.get("preprocess_version") != PREPROCESS_VERSION
            or not onnx_available()):
        return None     # another model, or resizing/normalisation code other than this one's: torch decides
    config = manifest["extractor"]
    if config.get("masks", True) and not info.get("segmenter") and config.get("segmenter") != "otsu":
        return None
    try:
        return OnnxEncoder(directory, config, threads)
    except Exception as e:  # noqa: BLE001 - an export this ONNX Runtime cannot load: the torch extractor will do
        logging.getLogger(__name__).warning("cached ONNX export %s unusable (%s: %s); encoding with torch",
                                            directory, type(e).__name__, e)
        return None
