"""Feature networks on top of backbones: the paper's ensemble and the single pretrained default.

Both return a :class:`FeatureNetOutput`: the feature vector and, per member, the 7 stage taps,
so that style (Gram) code downstream only deals with the tap contract.

The ensemble may share its first ``shared_stages`` stages (stem included) between members: they
are then computed once, by member 0, and the other members hold only their later stages. That is
how the CPU-trained default works (frozen ImageNet early stages, fine-tuned late stages per member);
``shared_stages=0`` gives the paper's fully independent members.

Trained ensembles are safetensors files whose metadata (key ``ensemble``) describes the
architecture, the target and its classes, so that :func:`load_ensemble` rebuilds them alone.
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import ConfigError
from ..names import TTA_COUNTS, TTA_VIEWS
from .description import EnsembleDescription
from .efficientnet import Backbone
from .registry import create_backbone
from .weights import WeightsNotFoundError, read_metadata, save_checkpoint, state_fingerprint

__all__ = ["TTA_VIEWS", "tta_views", "FeatureNetOutput", "PooledFeatureNet", "EnsembleFeatureNet", "EnsembleSpec",
           "save_ensemble", "load_ensemble", "read_ensemble_spec", "default_ensemble_path", "melanoma_probability"]

DEFAULT_FILE = "classifier-ensemble.safetensors"

# Test-time views of a square image batch [B, C, S, S]: dermoscopy has no "up", so flips and
# quarter turns show the same lesion. ``views=n`` averages the members' pooled vectors over the
# first n (1, 2 or 4); the Grams (style) always come from the image as it is.


def tta_views(x: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The first ``n`` of :data:`TTA_VIEWS` applied to ``x`` (identity first)."""
    if n not in TTA_COUNTS:
        raise ConfigError(f"test-time views must be 1, 2 or 4, not {n}")
    views = [x, x.flip(3), x.flip(2), x.rot90(1, (2, 3))]
    return views[:n]


@dataclass(frozen=True)
class FeatureNetOutput:
    feature: torch.Tensor                   # [B, D]
    member_taps: list[list[torch.Tensor]]   # per member, the 7 stage outputs
    logits: torch.Tensor | None = None      # training head, when present
    member_logits: list[torch.Tensor] | None = None   # each member's own (phase-one) head, when present


class PooledFeatureNet(nn.Module):
    """One backbone; the feature vector is its globally pooled vector (the untrained default)."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.members = nn.ModuleList([backbone])
        self.feature_dim = backbone.pooled_dim

    def forward(self, x: torch.Tensor, field: torch.Tensor | None = None) -> FeatureNetOutput:
        out = self.members[0](x, field)
        return FeatureNetOutput(out.pooled, [out.features])


@dataclass(frozen=True)
class EnsembleSpec:
    """What a trained ensemble file holds, beside its tensors."""

    backbone: str = "efficientnet-lite0"
    members: int = 5
    shared_stages: int = 0
    feature_dim: int = 1024
    head_outputs: int = 1              # 1: sigmoid (melanoma); C: softmax over ``classes``
    member_heads: bool = True
    target: str = "melanoma"           # "melanoma" or "diagnosis"
    classes: tuple[str, ...] = ("melanoma",)
    melanoma_class: str = "mel"        # diagnosis target: the class whose probability is melanoma's
    image_size: int = 224
    normalization: str = "tf"
    train: dict = field(default_factory=dict)    # the resolved training config
    members_fingerprint: str = ""      # state_fingerprint of the members as loaded from the file (what the
                                       # Grams depend on); written by save_ensemble, "" in older files
    metrics: dict = field(default_factory=dict)  # validation figures at save time

    def description(self) -> EnsembleDescription:
        """What the file's networks are (:class:`~dermsearch.models.description.EnsembleDescription`)."""
        return EnsembleDescription.of(self.backbone, self.members, self.feature_dim, self.image_size,
                                      self.normalization, (self.train or {}).get("colour", "none"))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> EnsembleSpec:
        d = json.loads(text)
        d["classes"] = tuple(d.get("classes", ()))
        return cls(**d)


class EnsembleFeatureNet(nn.Module):
    """N backbones -> (GAP, BatchNorm) each -> concatenation -> Dense(feature_dim, SELU) [-> head].

    The head (``head_outputs`` > 0) exists for training and for the head AUC; search uses
    ``feature``. ``member_heads`` keeps each member's own phase-one classifier (per-member AUC).
    """

    def __init__(self, members: list[Backbone], feature_dim: int = 1024, head_outputs: int = 0,
                 shared_stages: int = 0, member_heads: bool = False):
        super().__init__()
        if not members:
            raise ConfigError("an ensemble needs at least one member")
        n_stages = len(members[0].out_channels)
        if not 0 <= shared_stages < n_stages:
            raise ConfigError(f"shared_stages must be in 0..{n_stages - 1}, not {shared_stages}")
        self.shared_stages = shared_stages
        if shared_stages:
            for m in members[1:]:
                m.drop_prefix(shared_stages)
        self.members = nn.ModuleList(members)
        self.norms = nn.ModuleList(nn.BatchNorm1d(m.pooled_dim) for m in members)
        self.dense = nn.Linear(sum(m.pooled_dim for m in members), feature_dim)
        self.act = nn.SELU()
        self.head = nn.Linear(feature_dim, head_outputs) if head_outputs else None
        self.member_heads = (nn.ModuleList(nn.Linear(m.pooled_dim, head_outputs) for m in members)
                             if member_heads and head_outputs else None)
        self.feature_dim = feature_dim

    def member_outputs(self, x: torch.Tensor, field: torch.Tensor | None = None):
        """Each member's BackboneOutput (pooled over ``field`` when given, see ``Backbone.forward``);
        the shared prefix is computed once."""
        k = self.shared_stages
        if not k:
            return [m(x, field) for m in self.members]
        h, taps = self.members[0].forward_prefix(x, k)
        return [m.forward_suffix(h, k, taps, field) for m in self.members]

    def combine(self, pooled: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(feature, head logits) from the members' pooled vectors."""
        normed = [norm(p) for norm, p in zip(self.norms, pooled)]
        feature = self.act(self.dense(torch.cat(normed, dim=1)))
        return feature, (self.head(feature) if self.head is not None else None)

    def pooled_views(self, x: torch.Tensor, views: int, field: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Each member's pooled vector averaged over the first ``views`` test-time views of ``x``
        (the field of view, when given, flipped and turned with it)."""
        total = None
        fields = tta_views(field, views) if field is not None else [None] * views
        for xv, fv in zip(tta_views(x, views), fields):
            pooled = [o.pooled for o in self.member_outputs(xv, fv)]
            total = pooled if total is None else [a + b for a, b in zip(total, pooled)]
        return [t / views for t in total]

    def forward(self, x: torch.Tensor, views: int = 1, field: torch.Tensor | None = None) -> FeatureNetOutput:
        """``field``: optional [B, 1, S, S] field of view; the members' pooled vectors average over it."""
        outs = self.member_outputs(x, field)
        pooled = [o.pooled for o in outs]
        if views > 1:      # test-time averaging of the pooled vectors; taps stay those of x itself
            fields = tta_views(field, views)[1:] if field is not None else [None] * (views - 1)
            extra = [self.pooled_views(xv, 1, fv) for xv, fv in zip(tta_views(x, views)[1:], fields)]
            pooled = [sum((e[i] for e in extra), p) / views for i, p in enumerate(pooled)]
        feature, logits = self.combine(pooled)
        member_logits = None
        if self.member_heads is not None:
            member_logits = [h(p) for h, p in zip(self.member_heads, pooled)]
        return FeatureNetOutput(feature, [o.features for o in outs], logits, member_logits)


def melanoma_probability(logits: torch.Tensor, spec: EnsembleSpec) -> torch.Tensor:
    """P(melanoma) from head logits: the sigmoid unit, or the softmax share of the melanoma class."""
    if spec.head_outputs == 1:
        return torch.sigmoid(logits[:, 0])
    if spec.melanoma_class not in spec.classes:
        raise ConfigError(f"the classes {list(spec.classes)} hold no melanoma class {spec.melanoma_class!r}")
    return torch.softmax(logits, dim=1)[:, spec.classes.index(spec.melanoma_class)]


def default_ensemble_path() -> Path:
    path = Path(__file__).resolve().parents[1] / "weights" / DEFAULT_FILE
    if not path.is_file():
        raise WeightsNotFoundError(f"the packaged classifier ensemble {path} is missing; reinstall dermsearch")
    return path


def build_ensemble(spec: EnsembleSpec, imagenet: bool = False) -> EnsembleFeatureNet:
    members = [create_backbone(spec.backbone, "imagenet" if imagenet else None) for _ in range(spec.members)]
    for m in members:
        m.classifier = None
    return EnsembleFeatureNet(members, spec.feature_dim, spec.head_outputs, spec.shared_stages, spec.member_heads)


def save_ensemble(net: EnsembleFeatureNet, spec: EnsembleSpec, path: str | Path, half: bool = True) -> None:
    """Write the ensemble as safetensors (fp16 floats when ``half``), atomically. The spec records the
    members' fingerprint as a load of the file will compute it (after the fp16 round trip), so that
    style layer weights fitted for these members can be recognised without loading the file."""
    spec = replace(spec, members_fingerprint=members_fingerprint(net, half))
    save_checkpoint(net, Path(path), {"ensemble": spec.to_json()}, half=half)


def members_fingerprint(net: EnsembleFeatureNet, half: bool = True) -> str:
    """:func:`~dermsearch.models.weights.state_fingerprint` of ``net.members`` once stored (fp16 when
    ``half``) and loaded again (widened to fp32), without writing anything."""
    members = copy.deepcopy(net.members).cpu()
    if half:
        with torch.no_grad():
            for t in itertools.chain(members.parameters(), members.buffers()):
                if t.is_floating_point():
                    t.copy_(t.half().float())
    return state_fingerprint(members)


def read_ensemble_spec(path: str | Path) -> EnsembleSpec:
    return EnsembleSpec.from_json(read_metadata(path, "ensemble", "ensemble"))


def load_ensemble(path: str | Path) -> tuple[EnsembleFeatureNet, EnsembleSpec]:
    """Rebuild a trained ensemble from its file alone (strict; fp16 weights are widened to fp32)."""
    spec = read_ensemble_spec(path)
    net = build_ensemble(spec)
    net.load_state_dict(load_file(str(path)), strict=True)
    return net.float().eval(), spec
