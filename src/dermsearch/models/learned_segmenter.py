"""A trained segmenter (U-Net family) used for the index's lesion masks.

Weights are safetensors whose metadata holds the architecture and input convention; the
default ships inside the package (``dermsearch/weights/segmenter-unet.safetensors``, see
``dermsearch/weights/MODEL_CARD.md``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from .segmentation import Segmenter, SegmenterConfig
from .weights import WeightsNotFoundError, read_metadata

__all__ = ["LearnedSegmenter", "default_segmenter_path", "load_segmenter_file", "load_segmenter", "predict_masks"]

DEFAULT_FILE = "segmenter-unet.safetensors"


def default_segmenter_path() -> Path:
    path = Path(__file__).resolve().parents[1] / "weights" / DEFAULT_FILE
    if not path.is_file():
        raise WeightsNotFoundError(f"the packaged segmenter {path} is missing; reinstall dermsearch")
    return path


def load_segmenter_file(path: str | Path) -> tuple[Segmenter, dict]:
    """Load a segmenter checkpoint strictly; its metadata must describe the model."""
    info = json.loads(read_metadata(path, "segmenter", "segmenter"))
    model = Segmenter(SegmenterConfig(**info["model"]))
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()}, strict=True)
    return model.eval(), info


def load_segmenter(directory_or_file: str | Path) -> tuple[Segmenter, dict]:
    """A trained segmenter: a training run's directory (its ``best.safetensors``) or a weights file."""
    path = Path(directory_or_file)
    return load_segmenter_file(path / "best.safetensors" if path.is_dir() else path)


@torch.inference_mode()
def predict_masks(model: Segmenter, info: dict, images_u8: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Binary masks [N, 1, S, S] (logit > 0) for uint8 images [N, 3, S, S], normalised as the file
    ``info`` says its network was trained."""
    mean, std = float(info["input"]["mean"]), float(info["input"]["std"])
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images_u8), batch_size):
        x = images_u8[i:i + batch_size].to(device).float()
        out.append((model((x / 255.0 - mean) / std) > 0).cpu())
    return torch.cat(out)


class LearnedSegmenter:
    def __init__(self, path: str | Path, device: torch.device | str = "cpu"):
        self.model, self.info = load_segmenter_file(path)
        self.device = torch.device(device)
        self.model.to(self.device)
        inp = self.info["input"]
        self.input_size: int = int(inp["size"])
        self._mean, self._std = float(inp["mean"]), float(inp["std"])

    @torch.inference_mode()
    def segment_batch(self, rgb: np.ndarray) -> np.ndarray:
        """[B, S, S, 3] uint8 at ``input_size`` -> [B, S, S] bool (logit > 0)."""
        x = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device).permute(0, 3, 1, 2).float()
        logits = self.model((x / 255.0 - self._mean) / self._std)
        return (logits[:, 0] > 0).cpu().numpy()
