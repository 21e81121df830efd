"""ONNX export of an extractor's networks and ONNX Runtime inference for them.

Two graphs per model, exported from the very modules the torch backend runs:

- ``extractor.onnx``: raw pixels [B, 3, S, S] float32 (0..255), for lesion-pooled Grams the
  ``masks`` [B, 1, S, S] float32 0/1, and for field-of-view pooling the ``fields`` [B, 1, S, S]
  float32 0/1 (docs/usage.md, "ONNX export") -> the feature vector [B, D] and, when
  the model stores style, the packed style vector [B, Σ C(C+1)/2] (input normalisation, the
  members' Grams, their average, β weights and packing are all inside the graph);
- ``segmenter.onnx`` (learned segmenters only): raw pixels at the segmenter's size -> logits.

The backend is a runtime choice, like the device: it does not change what the index means, so it
is not part of the model fingerprint. The two backends agree to float32 rounding; the parity test
(``tests/test_onnx.py``) and ``docs/performance.md`` state the largest absolute difference.

Exports are cached under ``$DERMSEARCH_CACHE`` (default ``~/.cache/dermsearch``) by model
fingerprint, written to a temporary directory and renamed into place. Exporting needs only the
local weights: nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import MissingExtraError, install_hint
from ..io import replace_dir, temp_dir_for
from .config import PREPROCESS_VERSION
from .gram import average_grams, normalise_grams
from .ort import (
    EXPORT_VERSION,
    OnnxRuntimeBackend,
    check_export_folder,
    export_directory,
    onnx_available,
    onnx_cache_dir,
    onnx_export_available,
)

__all__ = ["OnnxRuntimeBackend", "export_onnx", "onnx_cache_dir", "onnx_available", "EXPORT_VERSION"]



class _ExtractionGraph(nn.Module):
    """Pixels -> (feature, style): the torch backend's computation as one traceable module."""

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor, betas, style: bool,
                 pool: str = "image", margin: float = 0.0, norm: str = "none", views: int = 1):
        super().__init__()  # inputs: pixels, then masks (lesion-pooled Grams), then fields (fov), as exported
        self.views = views
        self.net, self.style, self.betas = net, style, [float(b) for b in betas]
        self.pool, self.margin, self.norm = pool, margin, norm
        self.register_buffer("mean", mean.detach().cpu().clone())
        self.register_buffer("std", std.detach().cpu().clone())

    def forward(self, pixels: torch.Tensor, masks: torch.Tensor | None = None, fields: torch.Tensor | None = None):
        x = (pixels - self.mean) / self.std
        out = self.net(x, views=self.views, field=fields) if self.views > 1 else self.net(x, field=fields)
        if not self.style:
            return (out.feature,)
        parts = []
        grams = normalise_grams(average_grams(out.member_taps, masks, self.pool, self.margin, fields), self.norm)
        for g, beta in zip(grams, self.betas):
            c = g.shape[-1]
            iu = torch.triu_indices(c, c, offset=1)
            g = g * beta
            parts.append(torch.diagonal(g, dim1=-2, dim2=-1))
            parts.append(g[:, iu[0], iu[1]] * float(np.sqrt(2.0)))
        return out.feature, torch.cat(parts, dim=1)


class _SegmenterGraph(nn.Module):
    def __init__(self, model: nn.Module, mean: float, std: float):
        super().__init__()
        self.model, self.mean, self.std = model, mean, std

    def forward(self, pixels: torch.Tensor):
        return self.model((pixels / 255.0 - self.mean) / self.std)


def _export(module: nn.Module, example: torch.Tensor, path: Path, outputs: list[str],
            masks: torch.Tensor | None = None, fields: torch.Tensor | None = None) -> None:
    module = module.eval().cpu()
    batch = torch.export.Dim("batch", min=1, max=4096)
    inputs = {"pixels": example, "masks": masks, "fields": fields}   # lesion masks, fields of view: when used
    inputs = {k: v for k, v in inputs.items() if v is not None}
    args, names, shapes = (), list(inputs), {k: {0: batch} for k in inputs}
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)         # "torchvision is not installed" notices: irrelevant here
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, args, kwargs=inputs, dynamo=True, input_names=names, output_names=outputs,
                                    dynamic_shapes=shapes, external_data=False, verbose=False)
        program.save(str(path))
    quiet.setLevel(level)


def export_onnx(extractor, directory: str | os.PathLike | None = None) -> Path:
    """Export ``extractor``'s networks to ``directory`` (default: the cache, by fingerprint).
    Returns the directory; an existing complete export is reused."""
    if directory:
        directory = check_export_folder(directory)
    else:
        directory = export_directory(extractor.fingerprint)
    if (directory / "onnx.json").is_file():
        return directory
    if not onnx_export_available():
        raise MissingExtraError("exporting the networks to ONNX needs the 'onnx' extra (onnx, onnxscript): "
                                f"{install_hint('onnx')}; or use the torch backend")
    tmp = temp_dir_for(directory)
    cfg = extractor.config
    size = cfg.image_size
    pooled = cfg.style and cfg.gram_pool != "image"
    graph = _ExtractionGraph(extractor.net, extractor._mean, extractor._std, extractor.betas, cfg.style,
                             cfg.gram_pool, cfg.gram_margin, cfg.gram_norm, extractor.tta)
    outputs = ["feature", "style"] if cfg.style else ["feature"]
    example_masks = (torch.rand(2, 1, size, size) > 0.5).float() if pooled else None
    example_fields = (torch.rand(2, 1, size, size) > 0.2).float() if cfg.fov else None
    _export(graph, torch.rand(2, 3, size, size) * 255, tmp / "extractor.onnx", outputs, example_masks, example_fields)
    info = {"fingerprint": extractor.fingerprint, "export_version": EXPORT_VERSION, "image_size": size,
            "outputs": outputs, "torch": torch.__version__,
            "preprocess_version": PREPROCESS_VERSION, "segmenter": None, "masks_input": bool(pooled),
            "fields_input": bool(cfg.fov)}
    seg = extractor._segmenter
    if seg is not None and hasattr(seg, "model"):
        ss = seg.input_size
        _export(_SegmenterGraph(seg.model, seg._mean, seg._std), torch.rand(2, 3, ss, ss) * 255,
                tmp / "segmenter.onnx", ["logits"])
        info["segmenter"] = {"input_size": ss}
    with open(tmp / "onnx.json", "w") as f:
        json.dump(info, f, indent=2)
    replace_dir(tmp, directory)
    return directory
