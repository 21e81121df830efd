"""`train segmenter`, `train classifier`, `presets`: training the networks.

Model flags default to None ("not given"): a config is the preset's config instance with the flags
given replaced (``dataclasses.replace``), so the preset, not argparse, holds the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from ..names import (
    AUGMENTS,
    BACKBONE_INITS,
    COLOUR_METHODS,
    DIVERSITY,
    HEAD_SELECT,
    METRIC_LOSSES,
    PRECISIONS,
    SEG_ARCHS,
    TARGETS,
    TTA_COUNTS,
)
from ..presets import PRESETS, changed, get_preset
from .common import count, err, folder_to_write, positive_int
from .options import Common, given, optional, runtime_of

__all__ = ["register"]


def register(sub, common: Common) -> None:
    tr = sub.add_parser("train", help="train a model")
    trs = tr.add_subparsers(dest="what", required=True)
    run = _run_parent()

    ts = trs.add_parser("segmenter", parents=[common.labels, common.split, run, common.device, common.quiet],
                        help="train U-Net / RU-Net / R2U-Net with focal Tversky loss",
                        description="Train a lesion segmenter on image/mask pairs of a labels CSV (mask_path "
                                    "column). The checkpoint with the best val Dice is kept; rerunning the same "
                                    "command resumes.")
    optional(ts, "--arch", choices=SEG_ARCHS)
    optional(ts, "--depth", type=positive_int)
    optional(ts, "--width", type=positive_int)
    optional(ts, "--t", type=int, help="recurrence steps (runet, r2unet)")
    optional(ts, "--alpha", type=float, help="Tversky weight of false negatives")
    optional(ts, "--beta", type=float, help="Tversky weight of false positives")
    optional(ts, "--gamma", type=float, help="focal exponent: loss = (1 - TI)^(1/gamma)")
    ts.add_argument("--no-augment", action="store_true")
    ts.add_argument("--limit", type=count, default=0, help="use only the first N pairs per split (smoke runs)")
    ts.set_defaults(handler=cmd_train_segmenter)

    tc = trs.add_parser("classifier", parents=[common.labels, common.split, run, common.device, common.quiet],
                        help="train the EfficientNet ensemble (two phases, focal loss)",
                        description="Phase one trains each member alone with focal loss; phase two freezes them "
                                    "and trains GAP -> BN -> concat -> Dense(1024, SELU) -> head. The best "
                                    "checkpoint by val metric is kept; rerunning the same command resumes.")
    optional(tc, "--target", choices=TARGETS,
             help="diagnosis (default): softmax over the label column; melanoma: sigmoid vs rest (the paper's)")
    optional(tc, "--label-column", help="default: melanoma / diagnosis, after --target")
    optional(tc, "--backbone", metavar="NAME", help="a registered backbone ('dermsearch backbones')")
    optional(tc, "--weights", choices=BACKBONE_INITS, help="member initialisation")
    optional(tc, "--members", type=positive_int)
    optional(tc, "--trainable-stages", type=int, metavar="N",
             help="train the last N of the 7 stages; the others are frozen and shared (7: whole members)")
    optional(tc, "--stage-lr-decay", type=float, metavar="X",
             help="discriminative learning rates: each trained stage below the last learns at X times the rate "
                  "of the stage above it (default 1: one rate; e.g. 0.5 with --trainable-stages 7); meant for "
                  "ImageNet-initialised members, not --weights random")
    optional(tc, "--member-ema", type=float, metavar="DECAY",
             help="phase one: keep a moving average of each member's weights (e.g. 0.95; the warm-up caps the t-th "
                  "step's decay at (1 + t) / (10 + t)); the average is validated and kept (default 0: off)")
    optional(tc, "--member-metric-loss", choices=list(METRIC_LOSSES),
             help="phase one: a metric-learning loss on each member's pooled vector beside its focal loss "
                  "(supcon at --metric-temperature; default none)")
    optional(tc, "--member-metric-weight", type=float, help="phase one: weight of that loss (default 1)")
    optional(tc, "--head-epochs", type=positive_int, help="phase two epochs")
    optional(tc, "--head-lr", type=float)
    optional(tc, "--focal-alpha", type=float, help="binary: weight of the positive class")
    optional(tc, "--focal-gamma", type=float)
    optional(tc, "--class-weights", action="store_true", help="diagnosis: inverse-frequency class weights")
    optional(tc, "--balanced", action=argparse.BooleanOptionalAction,
             help="class-balanced sampling with replacement in both phases (default on; --no-balanced: the "
                  "natural class mix)")
    optional(tc, "--augment", choices=AUGMENTS,
             help="x7: the paper's offline expansion (default); online: random per batch")
    optional(tc, "--diversity", choices=list(DIVERSITY),
             help="how members differ (default bootstrap: bagging; snapshot: each member after the first "
                  "continues from the previous one's last weights with a warm restart, --snapshot-epochs each)")
    optional(tc, "--snapshot-epochs", type=int, metavar="N",
             help="diversity snapshot: phase-one epochs of each member after the first (default 1)")
    optional(tc, "--metric-loss", choices=list(METRIC_LOSSES),
             help="phase two: a metric-learning loss on the search feature beside the head's focal loss")
    optional(tc, "--metric-weight", type=float, help="weight of the metric loss (default 1)")
    optional(tc, "--metric-temperature", type=float, help="supcon temperature, both phases (default 0.1)")
    optional(tc, "--ema", type=float, metavar="DECAY", help="phase two: moving average of the weights (0: off)")
    optional(tc, "--head-select", choices=HEAD_SELECT,
             help="phase two keeps the epoch best by the head's val balanced accuracy or by the val macro-P@5 of "
                  "the feature's nearest training images")
    optional(tc, "--colour-strength", type=float, metavar="X",
             help="scale the colour augmentation (brightness, contrast, saturation and hue ranges) by X "
                  "(default 1: 0.2, 0.2, 0.2, 0.05)")
    optional(tc, "--scale-jitter", type=float, metavar="S",
             help="scale augmentation: zoom the augmented images by a factor log-uniform in [1/(1+S), 1+S] "
                  "(x7: variants 1-7; online: every draw; default 0: none)")
    optional(tc, "--colour", choices=COLOUR_METHODS,
             help="colour constancy on the network's input (indexing then applies it too)")
    optional(tc, "--tta", type=int, choices=TTA_COUNTS,
             help="phase two on the members' pooled vectors averaged over 1, 2 or 4 flips/quarter turns; indexing "
                  "then averages the same views")
    optional(tc, "--init-members", metavar="ENSEMBLE",
             help="reuse the members of this ensemble file ('default': the packaged one) and train phase two only")
    tc.add_argument("--cache", type=folder_to_write, metavar="DIR",
                    help="frozen-stage cache (default OUT/cache; shareable)")
    optional(tc, "--limit", type=count, help="use only the first N images per split (smoke runs)")
    tc.set_defaults(handler=cmd_train_classifier)

    pr = sub.add_parser("presets", parents=[common.json], help="list the presets and what they set")
    pr.set_defaults(handler=cmd_presets)


def _run_parent():
    """What both trainers take: the run directory, the preset, the common optimisation settings
    and the dry run."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--out", required=True, type=folder_to_write, metavar="DIR",
                   help="run directory (weights, config, history)")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS),
                   help="default (what ships, trainable on a CPU) or paper (the paper's scale); explicit flags "
                        "override it; see `dermsearch presets`")
    optional(p, "--image-size", type=positive_int)
    optional(p, "--epochs", type=positive_int, help="epochs (classifier: phase one epochs per member)")
    optional(p, "--batch-size", type=positive_int)
    optional(p, "--lr", type=float)
    optional(p, "--seed", type=int)
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="arithmetic of the training steps: auto (bf16 autocast on CUDA, fp32 on the CPU), fp32, or "
                        "bf16 (autocast on either; on CPUs with AMX or AVX512-BF16 whole members train ~2.5x faster). "
                        "Not part of what a run computes: a run resumes under another precision")
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
    if getattr(args, "no_augment", False):
        settings["augment"] = False
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
