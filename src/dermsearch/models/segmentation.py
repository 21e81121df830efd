"""Lesion segmenters: U-Net, RU-Net and R2U-Net (Alom et al. 2018), behind a registry.

All three share one encoder-decoder layout (``depth`` levels, ``width`` channels at the first
level, doubling per level; max-pool down, transposed-convolution up, skip concatenation) and
differ only in the block used at every level:

- ``unet``: two 3x3 conv-BN-ReLU layers (Ronneberger et al. 2015);
- ``runet``: two recurrent convolutional layers (RCL), each unrolled ``t`` steps:
  x_{k+1} = f(conv(x + x_k)), x_0 = f(conv(x));
- ``r2unet``: the RU-Net block with a residual connection (1x1 projection + the two RCLs).

Output: one logit per pixel (lesion vs background), same size as the input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import ConfigError, NotFoundError

__all__ = ["SegmenterConfig", "Segmenter", "create_segmenter", "list_segmenters"]


@dataclass(frozen=True)
class SegmenterConfig:
    arch: str = "r2unet"
    depth: int = 4          # resolution levels (input side must be divisible by 2**(depth-1))
    width: int = 16         # channels at the first level
    t: int = 2              # recurrence steps (RU-Net, R2U-Net)
    in_channels: int = 3

    def to_dict(self) -> dict:
        return asdict(self)


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class RecurrentConv(nn.Module):
    """A recurrent convolutional layer unrolled ``t`` steps (weights shared over steps)."""

    def __init__(self, channels: int, t: int):
        super().__init__()
        self.t = t
        self.conv = ConvBNReLU(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        for _ in range(self.t):
            h = self.conv(x + h)
        return h


class UNetBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, t: int = 0):
        super().__init__(ConvBNReLU(cin, cout), ConvBNReLU(cout, cout))


class RecurrentBlock(nn.Module):
    """RU-Net block: 1x1 projection to ``cout``, then two RCLs."""

    residual = False

    def __init__(self, cin: int, cout: int, t: int = 2):
        super().__init__()
        self.project = nn.Conv2d(cin, cout, 1)
        self.rcl = nn.Sequential(RecurrentConv(cout, t), RecurrentConv(cout, t))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project(x)
        y = self.rcl(x)
        return x + y if self.residual else y


class RecurrentResidualBlock(RecurrentBlock):
    """R2U-Net block: the RU-Net block plus the residual (identity over the projection)."""

    residual = True


BLOCKS: dict[str, Callable[..., nn.Module]] = {
    "unet": UNetBlock,
    "runet": RecurrentBlock,
    "r2unet": RecurrentResidualBlock,
}


class Segmenter(nn.Module):
    def __init__(self, config: SegmenterConfig):
        super().__init__()
        if config.arch not in BLOCKS:
            raise NotFoundError(f"unknown segmenter {config.arch!r}; valid names: {', '.join(list_segmenters())}")
        self.config = config
        block = BLOCKS[config.arch]
        widths = [config.width * 2**i for i in range(config.depth)]
        self.down = nn.ModuleList()
        cin = config.in_channels
        for w in widths:
            self.down.append(block(cin, w, config.t))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(w * 2, w, 2, stride=2))
            self.merge.append(block(w * 2, w, config.t))
        self.head = nn.Conv2d(widths[0], 1, 1)

    @property
    def multiple(self) -> int:
        return 2 ** (self.config.depth - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise ConfigError(f"input side must be a multiple of {self.multiple}, got {h}x{w}")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


def list_segmenters() -> list[str]:
    return sorted(BLOCKS)


def create_segmenter(arch: str = "r2unet", **kwargs) -> Segmenter:
    """Build a segmenter by name (``unet``, ``runet``, ``r2unet``); unknown -> KeyError."""
    if arch not in BLOCKS:
        raise NotFoundError(f"unknown segmenter {arch!r}; valid names: {', '.join(list_segmenters())}")
    return Segmenter(SegmenterConfig(arch=arch, **kwargs))
