"""Named configurations: ``default`` (the CPU-friendly one that ships) and ``paper`` (the paper's scale).

A preset is a set of overrides of the typed configs' defaults, per command; any flag given
explicitly on the command line overrides the preset. The configs' defaults *are* the ``default``
preset (one source of truth: ``ClassifierTrainConfig``, ``SegTrainConfig``, ``ExtractorConfig``),
so it overrides nothing, and the Python API and the CLI train and index the same models.
``dermsearch presets`` prints them resolved. Nothing here imports a network: presets are plain data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ConfigError, NotFoundError

__all__ = ["Preset", "PRESETS", "get_preset", "index_settings", "merged",
           "missing_settings"]


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    classifier: dict = field(default_factory=dict)   # ClassifierTrainConfig overrides
    segmenter: dict = field(default_factory=dict)    # SegTrainConfig overrides
    index: dict = field(default_factory=dict)        # ExtractorConfig overrides
    notes: tuple[str, ...] = ()


PRESETS: dict[str, Preset] = {
    "default": Preset(
        "default",
        "the configuration that ships: trainable on a 2-core CPU in about an hour",
        notes=("the configs' own defaults (`dermsearch presets --json` prints them resolved)",
               "members: EfficientNet-Lite0 from the packaged ImageNet weights; stages 1-5 frozen and shared, "
               "stages 6-7 and the head fine-tuned per member",
               "phase two: focal loss on the head plus supervised contrastive loss on the 1024-d search feature, "
               "epoch kept by val macro-P@5 of the feature, on the members' pooled vectors averaged over 4 "
               "flips/quarter turns (indexing averages the same views)"),
    ),
    "paper": Preset(
        "paper",
        "the paper's configuration: 5 EfficientNet-B6 at 384 px, x7 augmentation, R2U-Net at 384 px",
        classifier={"backbone": "efficientnet-b6", "weights": "random", "members": 5, "image_size": 384,
                    "trainable_stages": 7, "augment": "x7", "epochs": 10, "head_epochs": 20, "batch_size": 16,
                    "target": "melanoma", "metric_loss": "none", "head_select": "balanced_accuracy", "tta": 1},
        segmenter={"arch": "r2unet", "width": 32, "depth": 4, "t": 2, "image_size": 384, "epochs": 50,
                   "batch_size": 8},
        index={"requires": ["weights", "segmenter"], "gram_pool": "image", "gram_margin": 0.0, "gram_norm": "none",
               "gram_weights": "inverse-channels"},
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


def merged(preset: dict, given: dict) -> dict:
    """A preset's settings for one config, overridden by the settings given explicitly."""
    return {**{k: v for k, v in preset.items() if k != "requires"}, **given}


def missing_settings(name: str, given: dict) -> list[str]:
    """The settings a new index under preset ``name`` must be given (its trained model files)."""
    return [r for r in get_preset(name).index.get("requires", []) if given.get(r) is None]


def index_settings(name: str, given: dict) -> dict:
    """The model settings of a new index under preset ``name``: the preset's, overridden by
    ``given``. A preset whose model is trained, not packaged, requires its files in ``given``."""
    preset = get_preset(name)
    missing = missing_settings(name, given)
    if missing:
        raise ConfigError(f"preset {name!r} needs the settings {' and '.join(missing)}: the ensemble trained with "
                          f"this preset ('train classifier') and the best.safetensors of the segmenter trained "
                          f"with it ('train segmenter')")
    return merged(preset.index, given)
