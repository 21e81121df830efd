"""ONNX Runtime inference of an extractor's exported graphs (see :mod:`dermsearch.extract.onnx`
for the export). This module imports no torch: a query can be encoded from a cached export
without loading the network library (:mod:`dermsearch.extract.encoder`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError

__all__ = ["OnnxRuntimeBackend", "onnx_cache_dir", "onnx_available", "onnx_export_available", "export_directory",
           "check_export_folder", "EXPORT_VERSION"]

EXPORT_VERSION = 1


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def onnx_cache_dir() -> Path:
    return Path(os.environ.get("DERMSEARCH_CACHE", Path.home() / ".cache" / "dermsearch")) / "onnx"


def onnx_export_available() -> bool:
    """Whether networks can be exported here (the 'onnx' extra: onnx and onnxscript)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript"))


def export_directory(fingerprint: str) -> Path:
    """Where the export of the model with this fingerprint is cached."""
    return onnx_cache_dir() / f"{fingerprint}-v{EXPORT_VERSION}"


def check_export_folder(directory: str | os.PathLike) -> Path:
    """``directory`` resolved, if an export may replace it: missing, empty or an earlier export (it
    holds ``onnx.json``). Any other folder (say ``~/Downloads``) is refused, never emptied."""
    path = Path(directory).resolve()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{directory} is a file, not a folder; give a folder for the ONNX export")
    if path.is_dir() and any(path.iterdir()) and not (path / "onnx.json").is_file():
        raise ConfigError(f"{directory} is a folder with other files in it (no onnx.json: not an earlier "
                          "export), and the export replaces the whole folder; give a new or empty folder")
    return path


class OnnxRuntimeBackend:
    """ONNX Runtime sessions for an extractor's exported graphs (CPU, or CUDA when asked and present)."""

    def __init__(self, directory: Path, threads: int | None = None, device: str = "cpu"):
        import onnxruntime as ort

        self.info = json.loads((directory / "onnx.json").read_text())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or os.cpu_count() or 1
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.extractor = ort.InferenceSession(str(directory / "extractor.onnx"), opts, providers=providers)
        self.segmenter = None
        if self.info["segmenter"]:
            self.segmenter = ort.InferenceSession(str(directory / "segmenter.onnx"), opts, providers=providers)

    def features(self, pixels: np.ndarray, masks: np.ndarray | None = None, fields: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
        """[B, S, S, 3] uint8 (and [B, 1, S, S] float 0/1 pooling masks for lesion-aware Grams, and
        [B, 1, S, S] float 0/1 fields of view for field pooling) -> feature [B, D], style [B, Sd] or None."""
        x = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), dtype=np.float32)
        feeds = {"pixels": x}
        if self.info.get("masks_input"):
            if masks is None:
                raise ConfigError("this exported model pools its Grams over lesion masks: pass the masks")
            feeds["masks"] = np.ascontiguousarray(masks, dtype=np.float32)
        if self.info.get("fields_input"):
            if fields is None:
                raise ConfigError("this exported model pools over the field of view: pass the fields")
            feeds["fields"] = np.ascontiguousarray(fields, dtype=np.float32)
        out = self.extractor.run(None, feeds)
        return out[0], (out[1] if len(out) > 1 else None)

    def segment(self, pixels: np.ndarray) -> np.ndarray:
        """[B, s, s, 3] uint8 at the segmenter's size -> [B, s, s] bool."""
        x = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), dtype=np.float32)
        return self.segmenter.run(None, {"pixels": x})[0][:, 0] > 0
