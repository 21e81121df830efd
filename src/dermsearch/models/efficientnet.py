"""EfficientNet B0-B7 and EfficientNet-Lite0/1/2 in pure torch.

Every backbone honours one contract (:class:`Backbone`): ``forward(x)`` returns a
:class:`BackboneOutput` holding the outputs of all 7 stages (the end of each stage's last
block, i.e. the residual add where the block has one) and the globally pooled vector taken
after the 1x1 head convolution. ``out_channels`` declares the channels of the 7 taps.

Convolutions use TensorFlow "SAME" padding, so that the Lite checkpoints (converted from the
TensorFlow reference implementation) reproduce their ImageNet behaviour exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .pooling import field_weights, masked_mean

__all__ = [
    "Backbone",
    "BackboneOutput",
    "EfficientNet",
    "EfficientNetSpec",
    "StageSpec",
    "SPECS",
]

BN_EPS = 1e-3
BN_MOMENTUM = 0.01


@dataclass(frozen=True)
class StageSpec:
    """One stage of the B0 base network, before compound scaling."""

    expand: int
    kernel: int
    stride: int
    out_channels: int
    repeats: int


# The EfficientNet-B0 base network (Tan & Le 2019, table 1), stages 1..7.
BASE_STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 16, 1),
    StageSpec(6, 3, 2, 24, 2),
    StageSpec(6, 5, 2, 40, 2),
    StageSpec(6, 3, 2, 80, 3),
    StageSpec(6, 5, 1, 112, 3),
    StageSpec(6, 5, 2, 192, 4),
    StageSpec(6, 3, 1, 320, 1),
)


@dataclass(frozen=True)
class EfficientNetSpec:
    """Compound-scaling coefficients of one EfficientNet variant."""

    name: str
    width: float
    depth: float
    resolution: int
    dropout: float
    lite: bool = False

    @property
    def se_ratio(self) -> float:
        # Lite variants drop squeeze-and-excitation (poorly supported on mobile accelerators).
        return 0.0 if self.lite else 0.25


SPECS: dict[str, EfficientNetSpec] = {
    s.name: s
    for s in (
        EfficientNetSpec("efficientnet-b0", 1.0, 1.0, 224, 0.2),
        EfficientNetSpec("efficientnet-b1", 1.0, 1.1, 240, 0.2),
        EfficientNetSpec("efficientnet-b2", 1.1, 1.2, 260, 0.3),
        EfficientNetSpec("efficientnet-b3", 1.2, 1.4, 300, 0.3),
        EfficientNetSpec("efficientnet-b4", 1.4, 1.8, 380, 0.4),
        EfficientNetSpec("efficientnet-b5", 1.6, 2.2, 456, 0.4),
        EfficientNetSpec("efficientnet-b6", 1.8, 2.6, 528, 0.5),
        EfficientNetSpec("efficientnet-b7", 2.0, 3.1, 600, 0.5),
        EfficientNetSpec("efficientnet-lite0", 1.0, 1.0, 224, 0.2, lite=True),
        EfficientNetSpec("efficientnet-lite1", 1.0, 1.1, 240, 0.2, lite=True),
        EfficientNetSpec("efficientnet-lite2", 1.1, 1.2, 260, 0.3, lite=True),
    )
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by ``width`` and round to a multiple of ``divisor`` (reference rule)."""
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:  # never round down by more than 10 %
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


@dataclass(frozen=True)
class BackboneOutput:
    """What every backbone returns: the 7 stage-end feature maps and the pooled vector."""

    features: list[torch.Tensor]
    pooled: torch.Tensor


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (output size = ceil(input / stride))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class ConvBNAct(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, act: nn.Module | None, groups: int = 1):
        super().__init__()
        self.conv = Conv2dSame(cin, cout, kernel, stride=stride, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = self.expand(F.silu(self.reduce(s)))
        return x * torch.sigmoid(s)


class MBConv(nn.Module):
    """Mobile inverted bottleneck block, with optional SE and the identity shortcut."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int,
                 se_ratio: float, act: type[nn.Module], drop_path: float = 0.0):
        super().__init__()
        mid = cin * expand
        self.expand = ConvBNAct(cin, mid, 1, 1, act()) if expand != 1 else None
        self.depthwise = ConvBNAct(mid, mid, kernel, stride, act(), groups=mid)
        self.se = SqueezeExcite(mid, max(1, int(cin * se_ratio))) if se_ratio > 0 else None
        self.project = ConvBNAct(mid, cout, 1, 1, None)
        self.residual = stride == 1 and cin == cout
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.depthwise(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        if not self.residual:
            return y
        if self.training and self.drop_path > 0:
            keep = 1.0 - self.drop_path
            mask = torch.rand(y.shape[0], 1, 1, 1, dtype=y.dtype, device=y.device) < keep
            y = y * mask / keep
        return x + y


class Backbone(nn.Module):
    """The typed feature-tap contract that extraction code relies on."""

    name: str
    out_channels: tuple[int, ...]  # channels of the 7 stage taps
    pooled_dim: int
    default_size: int

    def forward(self, x: torch.Tensor, field: torch.Tensor | None = None) -> BackboneOutput:  # pragma: no cover
        """``field``: optional [B, 1, S, S] 0/1 field of view at the input's size; the pooled vector
        is then the head map's average over it (``models/pooling.py``), else over the whole map."""
        raise NotImplementedError


class EfficientNet(Backbone):
    def __init__(self, spec: EfficientNetSpec, num_classes: int = 0):
        super().__init__()
        self.spec = spec
        self.name = spec.name
        self.default_size = spec.resolution
        act: type[nn.Module] = nn.ReLU6 if spec.lite else nn.SiLU
        stem = 32 if spec.lite else round_filters(32, spec.width)
        head = 1280 if spec.lite else round_filters(1280, spec.width)
        self.stem = ConvBNAct(3, stem, 3, 2, act())

        n_stages = len(BASE_STAGES)
        repeats = [
            s.repeats if spec.lite and i in (0, n_stages - 1) else round_repeats(s.repeats, spec.depth)
            for i, s in enumerate(BASE_STAGES)
        ]
        total = sum(repeats)
        cin, k, stages, outs = stem, 0, [], []
        for s, r in zip(BASE_STAGES, repeats):
            cout = round_filters(s.out_channels, spec.width)
            blocks = []
            for j in range(r):
                # stochastic depth grows linearly with block index (reference: drop_connect 0.2)
                blocks.append(MBConv(cin if j == 0 else cout, cout, s.expand, s.kernel,
                                     s.stride if j == 0 else 1, spec.se_ratio, act, 0.2 * k / total))
                k += 1
            stages.append(nn.Sequential(*blocks))
            outs.append(cout)
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.out_channels = tuple(outs)
        self.head = ConvBNAct(cin, head, 1, 1, act())
        self.pooled_dim = head
        self.classifier = nn.Linear(head, num_classes) if num_classes else None
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.uniform_(m.weight, -1 / math.sqrt(m.in_features), 1 / math.sqrt(m.in_features))
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, field: torch.Tensor | None = None) -> BackboneOutput:
        x, features = self.forward_prefix(x, len(self.stages))
        return self.forward_suffix(x, len(self.stages), features, field)

    def forward_prefix(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Stem and the first ``k`` stages: (output of stage k, the k stage taps)."""
        if self.stem is None:
            raise RuntimeError(f"{self.name}: the prefix was dropped (it is shared with another member)")
        x = self.stem(x)
        features = []
        for stage in self.stages[:k]:
            x = stage(x)
            features.append(x)
        return x, features

    def forward_suffix(self, x: torch.Tensor, k: int, features: list[torch.Tensor],
                       field: torch.Tensor | None = None) -> BackboneOutput:
        """Stages ``k+1..7`` and the head on the output of stage ``k`` (``features``: the k prefix taps;
        ``field``: as in :meth:`forward`)."""
        features = list(features)
        for stage in self.stages[k:]:
            x = stage(x)
            features.append(x)
        head = self.head(x)
        if field is None:
            pooled = F.adaptive_avg_pool2d(head, 1).flatten(1)
        else:
            pooled = masked_mean(head, field_weights(field.to(head.dtype), tuple(head.shape[-2:])))
        return BackboneOutput(features, pooled)

    def drop_prefix(self, k: int) -> None:
        """Delete the stem and the first ``k`` stages (another member computes them for this one)."""
        self.stem = None
        for i in range(k):
            self.stages[i] = nn.Identity()

    def logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """ImageNet logits from the pooled vector (only when built with a classifier)."""
        if self.classifier is None:
            raise RuntimeError(f"{self.name} was built without a classifier head")
        return self.classifier(pooled)
