"""What defines a training run, in a module that imports no network library: the presets
(:mod:`dermsearch.presets`) are instances of these configs, and ``dermsearch presets`` prints
them without loading torch.

The dataclass defaults *are* the ``default`` preset (what ships). Where a run executes (device,
threads, progress) is not here: those are arguments of the trainers and never enter a run's
resume key. Every run writes its resolved config (``config.json``) beside its outputs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ..errors import ConfigError
from ..models.normalization import backbone_normalization
from ..names import AUGMENTS, COLOUR_METHODS, DIVERSITY, HEAD_SELECT, METRIC_LOSSES, TARGETS, TTA_COUNTS

__all__ = ["AugmentConfig", "ClassifierTrainConfig", "SegTrainConfig", "TARGETS", "N_STAGES", "NEUTRAL_SETTINGS"]

N_STAGES = 7
# classifier settings added after runs were made, at the value that trains as before they existed: a run
# (or a recorded config) without the setting is the same run as one with it at this value
NEUTRAL_SETTINGS = {"stage_lr_decay": 1.0, "member_ema": 0.0, "member_metric_loss": "none", "member_metric_weight": 1.0,
                    "scale_jitter": 0.0}


@dataclass(frozen=True)
class AugmentConfig:
    p_flip: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.05
    p_color: float = 0.8
    p_gridmask: float = 0.3
    grid_d: tuple[int, int] = (24, 64)      # at 128-224 px inputs
    grid_ratio: float = 0.4


@dataclass(frozen=True)
class ClassifierTrainConfig:
    labels: str = ""                   # the labels CSV (required to train; not part of a preset)
    split: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    target: str = "diagnosis"         # the shipped default (chosen on val over "melanoma", see MODEL_CARD)
    label_column: str = ""            # default: "melanoma" or "diagnosis", after the target
    melanoma_class: str = "mel"       # diagnosis target: the class that is melanoma
    backbone: str = "efficientnet-lite0"
    weights: str = "imagenet"         # member initialisation: "imagenet" (Lite) or "random"
    members: int = 5
    trainable_stages: int = 2         # the last N of the 7 stages are trained; the rest are shared, frozen
    image_size: int = 224
    feature_dim: int = 1024
    epochs: int = 3                   # phase one, per member
    head_epochs: int = 20             # phase two
    batch_size: int = 64
    lr: float = 1e-3
    head_lr: float = 1e-3
    weight_decay: float = 1e-4
    focal_alpha: float = 0.75         # binary: weight of positives (melanoma is ~11% of HAM10000)
    focal_gamma: float = 2.0
    class_weights: bool = False       # diagnosis: inverse-frequency weights in the loss
    balanced: bool = True             # class-balanced sampling (with replacement) in both phases; shipped since
                                      # round 7 of issue #17 (chosen on val, docs/experiments.md)
    augment: str = "x7"               # "x7" (offline expansion), "online" (random per batch) or "none"
    augment_config: AugmentConfig = field(default_factory=AugmentConfig)
    scale_jitter: float = 0.0         # zoom augmented images by a factor log-uniform in [1/(1+s), 1+s] (0: none):
                                      # the x7 variants 1-7 (the original stays) or every online draw
    diversity: str = "bootstrap"      # "bootstrap", "fold", "seed" or "snapshot"
    snapshot_epochs: int = 1          # diversity "snapshot": epochs of each member after the first (a warm restart)
    stage_lr_decay: float = 1.0       # phase one, discriminative learning rates: each trained stage below the
                                      # last learns at this times the rate of the stage above it (1: one rate)
    member_ema: float = 0.0           # phase one: decay of a moving average of each member's weights, with a
                                      # warm-up; the average is validated and kept (0: off)
    member_metric_loss: str = "none"  # phase one: "none", "supcon" or "proxy-anchor" on each member's pooled vector,
                                      # beside its focal loss (supcon at metric_temperature)
    member_metric_weight: float = 1.0 # phase one: weight of that loss
    dropout: float = 0.2
    head_variants: bool = False       # phase two also on the x7 variants (default: the originals only)
    head_dropout: float = 0.5         # phase two: dropout on the members' pooled vectors while training
    head_weight_decay: float = 1e-2   # phase two: AdamW weight decay
    metric_loss: str = "supcon"       # phase two: "none", "supcon" or "proxy-anchor" on the search feature
    metric_weight: float = 1.0        # phase two: weight of the metric loss beside the head's focal loss
    metric_temperature: float = 0.1   # supcon's temperature
    ema: float = 0.0                  # phase two: decay of an exponential moving average of the weights (0: off)
    head_select: str = "retrieval"    # phase two: keep the epoch best by this ("retrieval": feature P@5)
    colour: str = "shades-of-gray"    # colour constancy before the network ("none" or "shades-of-gray"), as at indexing
    tta: int = 4                      # phase two: pooled vectors averaged over 1, 2 or 4 flips/turns (as indexed)
    init_members: str = ""            # an ensemble file ("default": the packaged one) whose members are reused:
                                      # phase one is skipped and only phase two (BN, Dense, head) is trained
    seed: int = 0
    limit: int = 0                    # first N images of each split only (smoke tests)
    # where it runs (device) is not part of what a run computes: an argument of train_classifier

    def __post_init__(self) -> None:
        self._check_target_and_diversity()
        self._check_training_values()
        self._check_views_and_averages()

    def _check_target_and_diversity(self) -> None:
        if self.target not in TARGETS:
            raise ConfigError(f"target must be one of {TARGETS}, not {self.target!r}")
        if self.augment not in AUGMENTS:
            raise ConfigError(f"augment must be one of {AUGMENTS}, not {self.augment!r}")
        if self.diversity not in DIVERSITY:
            raise ConfigError(f"diversity must be one of {DIVERSITY}, not {self.diversity!r}")
        if self.snapshot_epochs < 1:
            raise ConfigError("snapshot_epochs must be at least 1")
        if self.snapshot_epochs != 1 and self.diversity != "snapshot":
            raise ConfigError(f"snapshot_epochs applies to diversity 'snapshot' only (diversity is {self.diversity!r})")

    def _check_training_values(self) -> None:
        if not 0 < self.stage_lr_decay <= 1:
            raise ConfigError(f"stage_lr_decay must be in (0, 1] (1: one learning rate), not {self.stage_lr_decay}")
        if not 1 <= self.trainable_stages <= N_STAGES:
            raise ConfigError(f"trainable_stages must be in 1..{N_STAGES}")
        if self.members < 1:
            raise ConfigError("members must be at least 1")
        if self.metric_loss not in METRIC_LOSSES:
            raise ConfigError(f"metric_loss must be one of {METRIC_LOSSES}, not {self.metric_loss!r}")
        if self.member_metric_loss not in METRIC_LOSSES:
            raise ConfigError(f"member_metric_loss must be one of {METRIC_LOSSES}, not {self.member_metric_loss!r}")
        if self.member_metric_weight <= 0:
            raise ConfigError(f"member_metric_weight must be positive, not {self.member_metric_weight}")
        if self.metric_temperature <= 0:
            raise ConfigError(f"metric_temperature must be positive, not {self.metric_temperature}")
        if self.head_select not in HEAD_SELECT:
            raise ConfigError(f"head_select must be one of {HEAD_SELECT}, not {self.head_select!r}")
        if self.colour not in COLOUR_METHODS:
            raise ConfigError(f"colour must be one of {COLOUR_METHODS}, not {self.colour!r}")
        if not 0 <= self.scale_jitter <= 1:
            raise ConfigError(f"scale_jitter must be in [0, 1] (0: no zoom), not {self.scale_jitter}")

    def _check_views_and_averages(self) -> None:
        if self.scale_jitter and self.augment == "none":
            raise ConfigError("scale_jitter zooms augmented images: it needs augment x7 or online, not none")
        if self.tta not in TTA_COUNTS:
            raise ConfigError(f"tta must be 1, 2 or 4 test-time views, not {self.tta}")
        if self.tta > 1 and self.head_variants:
            raise ConfigError("head_variants trains phase two on the x7 variants; it cannot be combined with tta > 1")
        if not 0 <= self.ema < 1:
            raise ConfigError("ema must be in [0, 1)")
        if not 0 <= self.member_ema < 1:
            raise ConfigError(f"member_ema must be in [0, 1) (0: off), not {self.member_ema}")
        if self.member_ema and self.diversity == "snapshot":
            raise ConfigError("member_ema cannot be combined with diversity 'snapshot': a snapshot continues from "
                              "the previous member's live weights, not its average")

    def require_labels(self) -> None:
        if not self.labels:
            raise ConfigError("an ensemble is trained on a labels CSV: set labels")

    def description(self):
        """The ensemble this run trains (:class:`~dermsearch.models.description.EnsembleDescription`);
        the file it writes carries the same (its spec is built from these fields)."""
        from ..models.description import EnsembleDescription

        return EnsembleDescription.of(self.backbone, self.members, self.feature_dim, self.image_size,
                                      self.normalization, self.colour)

    @property
    def column(self) -> str:
        return self.label_column or self.target

    def member_epochs(self, member: int) -> int:
        """Phase-one epochs of member ``member`` (0-based): ``epochs``, or ``snapshot_epochs`` for the
        members of a snapshot ensemble after the first."""
        return self.snapshot_epochs if self.diversity == "snapshot" and member > 0 else self.epochs

    @property
    def shared_stages(self) -> int:
        return N_STAGES - self.trainable_stages

    @property
    def normalization(self) -> str:
        return backbone_normalization(self.backbone)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


@dataclass(frozen=True)
class SegTrainConfig:
    labels: str = ""                    # the labels CSV (required to train; not part of a preset)
    split: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    arch: str = "unet"                 # the defaults are the default preset (what ships)
    depth: int = 4
    width: int = 16
    t: int = 2
    image_size: int = 128
    epochs: int = 50
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    alpha: float = 0.7
    beta: float = 0.3
    gamma: float = 4 / 3
    augment: bool = True
    augment_config: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    limit: int = 0                     # use only the first N pairs of each split (smoke tests)

    def segmenter_config(self):
        from ..models.segmentation import SegmenterConfig

        return SegmenterConfig(self.arch, self.depth, self.width, self.t)

    def require_labels(self) -> None:
        if not self.labels:
            raise ConfigError("a segmenter is trained on a labels CSV: set labels")
