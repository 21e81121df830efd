"""What defines a training run, in a module that imports no network library: the presets
(:mod:`dermsearch.presets`) are instances of these configs, and ``dermsearch presets`` prints
them without loading torch.

The dataclass defaults *are* the ``default`` preset (what ships). Where a run executes (device,
threads, progress) is not here: those are arguments of the trainers and never enter a run's
resume key. Every run writes its resolved config (``config.json``) beside its outputs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal

from ..errors import ConfigError
from ..names import (
    AUGMENTS,
    BACKBONE_INITS,
    COLOUR_METHODS,
    DIVERSITY,
    HEAD_SELECT,
    METRIC_LOSSES,
    SEG_ARCHS,
    TARGETS,
    TTA_COUNTS,
)
from .fields import check_fields, choice, setting

__all__ = ["AugmentConfig", "ClassifierTrainConfig", "SegTrainConfig", "TARGETS", "N_STAGES", "NEUTRAL_SETTINGS"]

N_STAGES = 7
# classifier settings added after runs were made, at the value that trains as before they existed: a run
# (or a recorded config) without the setting is the same run as one with it at this value
NEUTRAL_SETTINGS = {"stage_lr_decay": 1.0, "member_ema": 0.0, "member_metric_loss": "none", "member_metric_weight": 1.0,
                    "scale_jitter": 0.0, "vignette": 0.0, "hair": 0.0, "illuminant": 0.0}


@dataclass(frozen=True)
class AugmentConfig:
    """The random augmentation of training images (at 128-224 px inputs)."""

    p_flip: float = setting(0.5, "probability of each flip", min=0.0, max=1.0)
    brightness: float = setting(0.2, "colour jitter: brightness range", min=0.0)
    contrast: float = setting(0.2, "colour jitter: contrast range", min=0.0)
    saturation: float = setting(0.2, "colour jitter: saturation range", min=0.0)
    hue: float = setting(0.05, "colour jitter: hue range", min=0.0, max=0.5)
    p_color: float = setting(0.8, "probability of the colour jitter", min=0.0, max=1.0)
    p_gridmask: float = setting(0.3, "probability of GridMask", min=0.0, max=1.0)
    grid_d: tuple[int, int] = setting((24, 64), "GridMask: range of the grid's period in pixels")
    grid_ratio: float = setting(0.4, "GridMask: share of each period masked", min=0.0, max=1.0)

    def __post_init__(self) -> None:
        check_fields(self)


_SIDE = "side of the network's input in pixels"
_BATCH = "images per training batch"


@dataclass(frozen=True)
class ClassifierTrainConfig:
    """An ensemble's training run: phase one trains each member alone with focal loss; phase two
    freezes them and trains GAP -> BN -> concat -> Dense(1024, SELU) -> head."""

    labels: str = setting("", "the labels CSV (required to train; not part of a preset)")
    split: str | None = setting(None, "an image_id,split file (default: the labels CSV's split column)")
    train_split: str = setting("train", "the split trained on")
    val_split: str = setting("val", "the split the kept epoch is chosen on")
    target: Literal[*TARGETS] = choice(TARGETS, "diagnosis", "diagnosis: softmax over the label column (shipped, "
                                       "chosen on val, see MODEL_CARD); melanoma: sigmoid vs rest (the paper's)")
    label_column: str = setting("", "the label column (empty: melanoma or diagnosis, after the target)")
    melanoma_class: str = setting("mel", "diagnosis target: the class that is melanoma")
    backbone: str = setting("efficientnet-lite0", "a registered backbone ('dermsearch backbones' lists them)",
                            metavar="NAME")
    weights: Literal[*BACKBONE_INITS] = choice(BACKBONE_INITS, "imagenet", "member initialisation")
    members: int = setting(5, "members of the ensemble", min=1)
    trainable_stages: int = setting(2, f"train the last N of the {N_STAGES} stages; the others are frozen and shared "
                                    f"({N_STAGES}: whole members)", min=1, max=N_STAGES, metavar="N")
    image_size: int = setting(224, _SIDE, min=1)
    feature_dim: int = setting(1024, "length of the search feature (the Dense layer)", min=1)
    epochs: int = setting(3, "phase one epochs per member", min=1)
    head_epochs: int = setting(20, "phase two epochs", min=1)
    batch_size: int = setting(64, _BATCH, min=1)
    lr: float = setting(1e-3, "phase one learning rate", above=0.0)
    head_lr: float = setting(1e-3, "phase two learning rate", above=0.0)
    weight_decay: float = setting(1e-4, "phase one weight decay", min=0.0)
    focal_alpha: float = setting(0.75, "binary: weight of the positive class (melanoma is ~11% of HAM10000)",
                                 min=0.0, max=1.0)
    focal_gamma: float = setting(2.0, "focal loss exponent", min=0.0)
    class_weights: bool = setting(False, "diagnosis: inverse-frequency class weights in the loss")
    balanced: bool = setting(True, "class-balanced sampling with replacement in both phases (off: the natural "
                             "class mix); shipped since round 7 of issue #17 (chosen on val, docs/experiments.md)")
    augment: Literal[*AUGMENTS] = choice(AUGMENTS, "x7", "x7: the paper's offline expansion; online: random per "
                                         "batch; none")
    augment_config: AugmentConfig = setting(help="the random augmentation's ranges", factory=AugmentConfig)
    scale_jitter: float = setting(0.0, "scale augmentation: zoom the augmented images by a factor log-uniform in "
                                  "[1/(1+S), 1+S] (x7: variants 1-7; online: every draw; 0: none)",
                                  min=0.0, max=1.0, metavar="S")
    vignette: float = setting(0.0, "synthetic vignette: the probability that an augmented image gets a contact "
                              "dermatoscope's dark vignette (x7: variants 1-7; online: every draw; 0: none)",
                              min=0.0, max=1.0, metavar="P")
    hair: float = setting(0.0, "synthetic hair: the probability that an augmented image gets dark hairs drawn "
                          "over it (x7: variants 1-7; online: every draw; 0: none)", min=0.0, max=1.0, metavar="P")
    illuminant: float = setting(0.0, "random illuminant: each channel of an augmented image times a gain "
                                "exp(S * z), z a standard normal draw per channel less its mean over the three "
                                "(x7: variants 1-7; online: every draw; 0: none); meant with colour none",
                                min=0.0, max=1.0, metavar="S")
    diversity: Literal[*DIVERSITY] = choice(DIVERSITY, "bootstrap", "how members differ (bootstrap: bagging; "
                                            "snapshot: each member after the first continues from the previous one's "
                                            "last weights with a warm restart, snapshot epochs each)")
    snapshot_epochs: int = setting(1, "diversity snapshot: phase-one epochs of each member after the first",
                                   min=1, metavar="N")
    stage_lr_decay: float = setting(1.0, "discriminative learning rates: each trained stage below the last learns at "
                                    "X times the rate of the stage above it (1: one rate; e.g. 0.5 with 7 trainable "
                                    "stages); meant for ImageNet-initialised members", above=0.0, max=1.0,
                                    metavar="X")
    member_ema: float = setting(0.0, "phase one: keep a moving average of each member's weights (e.g. 0.95; the "
                                "warm-up caps the t-th step's decay at (1 + t) / (10 + t)); the average is validated "
                                "and kept (0: off)", min=0.0, below=1.0, metavar="DECAY")
    member_metric_loss: Literal[*METRIC_LOSSES] = choice(
        METRIC_LOSSES, "none", "phase one: a metric-learning loss on each member's pooled vector beside its focal "
        "loss (supcon at the metric temperature)")
    member_metric_weight: float = setting(1.0, "phase one: weight of that loss", above=0.0)
    dropout: float = setting(0.2, "phase one: dropout before each member's head", min=0.0, below=1.0)
    head_variants: bool = setting(False, "phase two also on the x7 variants (default: the originals only)")
    head_dropout: float = setting(0.5, "phase two: dropout on the members' pooled vectors while training",
                                  min=0.0, below=1.0)
    head_weight_decay: float = setting(1e-2, "phase two: AdamW weight decay", min=0.0)
    metric_loss: Literal[*METRIC_LOSSES] = choice(METRIC_LOSSES, "supcon", "phase two: a metric-learning loss on "
                                                  "the search feature beside the head's focal loss")
    metric_weight: float = setting(1.0, "phase two: weight of the metric loss", min=0.0)
    metric_temperature: float = setting(0.1, "supcon temperature, both phases", above=0.0)
    ema: float = setting(0.0, "phase two: moving average of the weights (0: off)", min=0.0, below=1.0,
                         metavar="DECAY")
    head_select: Literal[*HEAD_SELECT] = choice(HEAD_SELECT, "retrieval", "phase two keeps the epoch best by the "
                                                "head's val balanced accuracy or by the val macro-P@5 of the "
                                                "feature's nearest training images (retrieval)")
    colour: Literal[*COLOUR_METHODS] = choice(COLOUR_METHODS, "shades-of-gray", "colour constancy on the network's "
                                              "input (indexing then applies it too)")
    tta: Literal[*TTA_COUNTS] = choice(TTA_COUNTS, 4, "phase two on the members' pooled vectors averaged over 1, 2 "
                                       "or 4 flips/quarter turns; indexing then averages the same views")
    init_members: str = setting("", "reuse the members of this ensemble file ('default': the packaged one) and "
                                "train phase two only (BN, Dense, head)", metavar="ENSEMBLE")
    seed: int = setting(0, "seed of the run")
    limit: int = setting(0, "use only the first N images per split (smoke runs; 0: all)", min=0)
    # where it runs (device) is not part of what a run computes: an argument of train_classifier

    def __post_init__(self) -> None:
        check_fields(self)
        if self.snapshot_epochs != 1 and self.diversity != "snapshot":
            raise ConfigError(f"snapshot_epochs applies to diversity 'snapshot' only (diversity is {self.diversity!r})")
        if self.scale_jitter and self.augment == "none":
            raise ConfigError("scale_jitter zooms augmented images: it needs augment x7 or online, not none")
        if (self.vignette or self.hair or self.illuminant) and self.augment == "none":
            raise ConfigError("vignette, hair and illuminant change augmented images: they need augment x7 or "
                              "online, not none")
        if (self.vignette or self.hair or self.illuminant) and self.init_members:
            raise ConfigError("vignette, hair and illuminant augment phase one's inputs: with init_members there is "
                              "no phase one")
        if self.tta > 1 and self.head_variants:
            raise ConfigError("head_variants trains phase two on the x7 variants; it cannot be combined with tta > 1")
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
        from ..models.normalization import backbone_normalization

        return backbone_normalization(self.backbone)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


@dataclass(frozen=True)
class SegTrainConfig:
    """A segmenter's training run (the defaults are the default preset: what ships)."""

    labels: str = setting("", "the labels CSV (required to train; not part of a preset)")
    split: str | None = setting(None, "an image_id,split file (default: the labels CSV's split column)")
    train_split: str = setting("train", "the split trained on")
    val_split: str = setting("val", "the split the kept checkpoint is chosen on (best Dice)")
    arch: Literal[*SEG_ARCHS] = choice(SEG_ARCHS, "unet", "U-Net, RU-Net or R2U-Net")
    depth: int = setting(4, "levels of the U", min=1)
    width: int = setting(16, "channels of the first level", min=1)
    t: int = setting(2, "recurrence steps (runet, r2unet)")
    image_size: int = setting(128, _SIDE, min=1)
    epochs: int = setting(50, "epochs", min=1)
    batch_size: int = setting(32, _BATCH, min=1)
    lr: float = setting(2e-3, "learning rate", above=0.0)
    weight_decay: float = setting(1e-4, "weight decay", min=0.0)
    alpha: float = setting(0.7, "Tversky weight of false negatives")
    beta: float = setting(0.3, "Tversky weight of false positives")
    gamma: float = setting(4 / 3, "focal exponent: loss = (1 - TI)^(1/gamma)")
    augment: bool = setting(True, "augment the training pairs (flips, colour, GridMask)")
    augment_config: AugmentConfig = setting(help="the random augmentation's ranges", factory=AugmentConfig)
    seed: int = setting(0, "seed of the run")
    limit: int = setting(0, "use only the first N pairs per split (smoke runs; 0: all)", min=0)

    def __post_init__(self) -> None:
        check_fields(self)

    def segmenter_config(self):
        from ..models.segmentation import SegmenterConfig

        return SegmenterConfig(self.arch, self.depth, self.width, self.t)

    def require_labels(self) -> None:
        if not self.labels:
            raise ConfigError("a segmenter is trained on a labels CSV: set labels")
