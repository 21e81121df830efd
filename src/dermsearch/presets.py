"""Named configurations: ``default`` (the CPU-friendly one that ships) and ``paper`` (the paper's scale).

A preset is a set of instances of the config root's classes (:mod:`dermsearch.config`): a
:class:`~dermsearch.config.ClassifierTrainConfig`, a :class:`~dermsearch.config.SegTrainConfig` and an
:class:`~dermsearch.config.ExtractorConfig`, plus the index settings a user must supply
(trained model files). The dataclasses' defaults *are* the ``default`` preset (one source of truth),
so the Python API and the CLI train and index the same models. Settings given explicitly (command
line flags, keyword arguments) replace a preset's with :func:`dataclasses.replace`.
``dermsearch presets`` prints them. Nothing here imports a network.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from .config import PAPER_STYLE, ClassifierTrainConfig, ExtractorConfig, SegTrainConfig
from .errors import ConfigError, NotFoundError

__all__ = ["Preset", "PRESETS", "get_preset", "changed"]


def changed(config) -> dict:
    """The settings of a config instance that differ from its class's defaults."""
    default = type(config)()
    return {f.name: getattr(config, f.name) for f in fields(config) if getattr(config, f.name) != getattr(default,
                                                                                                        f.name)}


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    classifier: ClassifierTrainConfig = field(default_factory=ClassifierTrainConfig)
    segmenter: SegTrainConfig = field(default_factory=SegTrainConfig)
    index: ExtractorConfig = field(default_factory=ExtractorConfig)
    requires: tuple[str, ...] = ()      # index settings the user must give: the trained model files
    notes: tuple[str, ...] = ()

    def index_settings(self, given: dict) -> dict:
        """The model settings of a new index under this preset: the preset's (where they differ
        from the defaults), replaced by ``given``; the settings it requires must be in ``given``."""
        missing = self.missing(given)
        if missing:
            raise ConfigError(f"preset {self.name!r} needs the settings {' and '.join(missing)}: the ensemble "
                              f"trained with this preset ('train classifier') and the best.safetensors of the "
                              f"segmenter trained with it ('train segmenter')")
        return {**changed(self.index), **given}

    def missing(self, given: dict) -> list[str]:
        """The required settings ``given`` lacks."""
        return [r for r in self.requires if given.get(r) is None]


PRESETS: dict[str, Preset] = {
    "default": Preset(
        "default",
        "the configuration that ships: trainable on a 2-core CPU in about an hour",
        notes=("the configs' own defaults (`dermsearch presets --json` prints them resolved)",
               "members: EfficientNet-Lite0 from the packaged ImageNet weights; stages 1-5 frozen and shared, "
               "stages 6-7 and the head fine-tuned per member",
               "class-balanced sampling in both phases (each epoch draws the diagnoses alike, with replacement)",
               "phase two: focal loss on the head plus supervised contrastive loss on the 1024-d search feature, "
               "epoch kept by val macro-P@5 of the feature, on the members' pooled vectors averaged over 4 "
               "flips/quarter turns (indexing averages the same views)"),
    ),
    "paper": Preset(
        "paper",
        "the paper's configuration: 5 EfficientNet-B6 at 384 px, x7 augmentation, R2U-Net at 384 px",
        classifier=ClassifierTrainConfig(
            backbone="efficientnet-b6", weights="random", members=5, image_size=384, trainable_stages=7,
            augment="x7", epochs=10, head_epochs=20, batch_size=16, target="melanoma", metric_loss="none",
            head_select="balanced_accuracy", tta=1, colour="none", balanced=False),
        segmenter=SegTrainConfig(arch="r2unet", width=32, depth=4, t=2, image_size=384, epochs=50, batch_size=8),
        index=ExtractorConfig(**PAPER_STYLE, fov=False),
        requires=("weights", "segmenter"),
        notes=("no ImageNet weights for EfficientNet-B6 ship offline, so members start from random weights "
               "(the paper's were ImageNet-pretrained), so expect to need more epochs than the paper",
               "index --preset paper needs --weights (an ensemble from `train classifier --preset paper`) and "
               "--segmenter (best.safetensors from `train segmenter --preset paper`); the architecture is read "
               "from the files; Grams are taken at the 7 stage ends as always",
               "an epoch is one pass of N draws from the x7-expanded pool (N = training images), i.e. 1/8 of "
               "a pass over the expanded set"),
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise NotFoundError(f"unknown preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}") from None
