"""`train segmenter`, `train classifier`, `presets`: training the networks.

Model flags default to None ("not given"): a config is the preset's config instance with the flags
given replaced (``dataclasses.replace``), so the preset, not argparse, holds the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from ..config import ClassifierTrainConfig, Runtime, SegTrainConfig
from ..presets import PRESETS, changed, get_preset
from .common import err, folder_to_write, positive_int
from .options import Common, add_config_flags, given, runtime_of

__all__ = ["register"]


# the flags that set a config field, by trainer (a preset's value unless given); the rest are the run's
_RUN = ("image_size", "epochs", "batch_size", "lr", "seed")
_SEGMENTER = (*_RUN, "arch", "depth", "width", "t", "alpha", "beta", "gamma", "augment", "limit")
_CLASSIFIER = (*_RUN, "target", "label_column", "backbone", "weights", "members", "trainable_stages", "stage_lr_decay",
               "member_ema", "member_metric_loss", "member_metric_weight", "head_epochs", "head_lr", "focal_alpha",
               "focal_gamma", "class_weights", "balanced", "augment", "diversity", "snapshot_epochs", "metric_loss",
               "metric_weight", "metric_temperature", "ema", "head_select", "scale_jitter", "vignette", "hair",
               "illuminant", "colour", "tta", "init_members", "limit")


def register(sub, common: Common) -> None:
    tr = sub.add_parser("train", help="train a model")
    trs = tr.add_subparsers(dest="what", required=True)
    run = _run_parent()

    ts = trs.add_parser("segmenter", parents=[common.labels, common.split, run, common.device, common.quiet],
                        help="train U-Net / RU-Net / R2U-Net with focal Tversky loss",
                        description="Train a lesion segmenter on image/mask pairs of a labels CSV (mask_path "
                                    "column). The checkpoint with the best val Dice is kept; rerunning the same "
                                    "command resumes.")
    add_config_flags(ts, SegTrainConfig, _SEGMENTER, optional=True, flags={"augment": "--no-augment"},
                     helps={"augment": "train on the pairs as they are (no flips, colour jitter or GridMask)"})
    ts.set_defaults(handler=cmd_train_segmenter)

    tc = trs.add_parser("classifier", parents=[common.labels, common.split, run, common.device, common.quiet],
                        help="train the EfficientNet ensemble (two phases, focal loss)",
                        description="Phase one trains each member alone with focal loss; phase two freezes them "
                                    "and trains GAP -> BN -> concat -> Dense(1024, SELU) -> head. The best "
                                    "checkpoint by val metric is kept; rerunning the same command resumes.")
    add_config_flags(tc, ClassifierTrainConfig, _CLASSIFIER, optional=True)
    tc.add_argument("--colour-strength", type=float, default=None, metavar="X",
                    help="scale the colour augmentation (brightness, contrast, saturation and hue ranges) by X "
                         "(default 1: 0.2, 0.2, 0.2, 0.05)")
    tc.add_argument("--cache", type=folder_to_write, metavar="DIR",
                    help="frozen-stage cache (default OUT/cache; shareable)")
    tc.set_defaults(handler=cmd_train_classifier)

    pr = sub.add_parser("presets", parents=[common.json], help="list the presets and what they set")
    pr.set_defaults(handler=cmd_presets)


def _run_parent():
    """What both trainers take: the run directory, the preset, the arithmetic and the dry run."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--out", required=True, type=folder_to_write, metavar="DIR",
                   help="run directory (weights, config, history)")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS),
                   help="default (what ships, trainable on a CPU) or paper (the paper's scale); explicit flags "
                        "override it (the defaults shown are the default preset's); see `dermsearch presets`")
    add_config_flags(p, Runtime, ("precision",))
    p.add_argument("--dry-run", action="store_true", help="print parameters, memory and measured seconds per "
                   "batch from a few real steps on this device, then the estimated training time; train nothing")
    p.add_argument("--dry-run-steps", type=positive_int, default=3, metavar="N", help="steps measured by --dry-run")
    return p


def _require_train() -> None:
    from ..errors import require

    for module in ("monai", "kornia", "pytorch_metric_learning"):
        require(module, "train", "training")


def _config(args, preset_config):
    """The preset's config instance with the settings given on the command line replaced."""
    settings = given(args, {f.name for f in dataclasses.fields(preset_config)})
    strength = getattr(args, "colour_strength", None)
    if strength is not None:
        if not strength >= 0:
            from ..errors import ConfigError
            raise ConfigError(f"--colour-strength must be >= 0, not {strength}")
        a = preset_config.augment_config
        settings["augment_config"] = dataclasses.replace(
            a, brightness=a.brightness * strength, contrast=a.contrast * strength,
            saturation=a.saturation * strength, hue=min(0.5, a.hue * strength))
    return dataclasses.replace(preset_config, **settings)


def _print_dry_run(estimate) -> int:
    err.print(estimate.describe(), highlight=False)
    print(json.dumps(estimate.to_json()))
    return 0


def cmd_train_segmenter(args) -> int:
    _require_train()
    from ..train.resources import dry_run_segmenter
    from ..train.segmenter import train_segmenter

    cfg = _config(args, get_preset(args.preset).segmenter)
    runtime = runtime_of(args, precision=args.precision)
    if args.dry_run:
        return _print_dry_run(dry_run_segmenter(cfg, args.dry_run_steps, runtime))
    result = train_segmenter(cfg, args.out, log=lambda m: err.print(m, highlight=False), progress=not args.quiet,
                             runtime=runtime)
    print(f"best val Dice {result['best_val_dice']:.4f}; weights: {args.out / 'best.safetensors'}")
    return 0


def cmd_train_classifier(args) -> int:
    _require_train()
    from ..train.classifier import train_classifier
    from ..train.resources import dry_run_classifier

    cfg = _config(args, get_preset(args.preset).classifier)
    runtime = runtime_of(args, precision=args.precision)
    if args.dry_run:
        return _print_dry_run(dry_run_classifier(cfg, args.dry_run_steps, runtime))
    metrics = train_classifier(cfg, args.out, log=lambda m: err.print(m, highlight=False), progress=not args.quiet,
                               cache_dir=args.cache, runtime=runtime)
    print(json.dumps({"val": metrics["val"]["ensemble"], "weights": str(args.out / "ensemble.safetensors")}))
    return 0


def cmd_presets(args) -> int:
    resolved = {}
    for name, p in PRESETS.items():
        resolved[name] = {
            "description": p.description,
            "train classifier": p.classifier.to_dict(),
            "train segmenter": json.loads(json.dumps(dataclasses.asdict(p.segmenter))),
            "index": dataclasses.asdict(p.index), "index requires": list(p.requires), "notes": list(p.notes)}
    if args.json:
        print(json.dumps(resolved, indent=1))
        return 0
    for name, p in PRESETS.items():
        print(f"{name}: {p.description}")
        for what, config in (("train classifier", p.classifier), ("train segmenter", p.segmenter),
                             ("index", p.index)):
            shown = ", ".join(f"{k}={v}" for k, v in changed(config).items()) or "(the defaults)"
            print(f"  {what + ':':18s}{shown}")
        if p.requires:
            print(f"  {'index requires:':18s}{', '.join(p.requires)}")
        for note in p.notes:
            print(f"  note: {note}")
    print("Any flag given explicitly overrides the preset; `--json` prints every resolved setting.")
    return 0
