"""The ``dermsearch`` command: a thin layer over the Python API (Index, Searcher)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .. import __version__
from ..extract import ExtractorConfig, ImageError
from ..extract.extractor import BACKENDS, PAPER_STYLE
from ..extract.gram import GRAM_NORMS, GRAM_POOLS
from ..index import Index, IndexError_
from ..index.build import BuildConfig, build_index
from ..index.sources import SourceError
from ..models import WeightsNotFoundError, list_backbones
from ..presets import PRESETS, get_preset
from ..search import MEASURES, Filters, Searcher
from ..search.fast import FastConfig, FastModeMissing
from ..search.sharded import ShardTooLarge
from .common import UsageError, err
from .render import print_tables, write_contact_sheet
from .serve import cmd_serve, cmd_token

DEVICE_HELP = "where the networks run: auto (CUDA when torch sees it, else CPU), cpu, cuda or cuda:N"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dermsearch", description="Reverse image search for dermoscopic images.")
    p.add_argument("--version", action="version", version=f"dermsearch {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    ix = sub.add_parser("index", help="build or extend an index from a folder or a labels CSV",
                        description="Index SOURCE (a folder of images or a labels CSV) into --index DIR. "
                                    "Images already in the index are skipped, so an interrupted run resumes.")
    ix.add_argument("source", nargs="?", help="folder of images, or labels CSV (image_id, image_path, ...)")
    ix.add_argument("--index", required=True, type=Path, metavar="DIR")
    ix.add_argument("--remove", nargs="+", metavar="ID", help="remove these image ids from the index")
    ix.add_argument("--check", action="store_true", help="verify the index's integrity and exit")
    m = ix.add_argument_group("model (new index only; an existing index keeps its own)")
    m.add_argument("--backbone", choices=list_backbones(), help="default efficientnet-lite0")
    m.add_argument("--weights", help="default (the packaged trained ensemble), imagenet (untrained Lite, pooled "
                   "feature), random, or a trained ensemble .safetensors (its architecture is read from the file)")
    m.add_argument("--image-size", type=int)
    m.add_argument("--mask-size", type=int, help="stored mask side in pixels (multiple of 8; default 128)")
    m.add_argument("--gram-weights", metavar="W", help="style layer weights: inverse-channels (paper default), ones, "
                   "learned (fitted on HAM10000 val for the packaged model), or a .json from fit-gram-weights")
    m.add_argument("--gram-pool", choices=list(GRAM_POOLS), help="Gram statistics over the whole image (paper), "
                   "over the lesion mask, or lesion then surrounding skin")
    m.add_argument("--gram-norm", choices=list(GRAM_NORMS), help="normalise each Gram before weighting: none "
                   "(paper), l2 (Frobenius), sqrt (signed square root), sqrt+l2")
    m.add_argument("--gram-margin", type=float, metavar="F", help="dilate the lesion mask by F x the image side "
                   "before pooling (with --gram-pool lesion*)")
    m.add_argument("--segmenter", metavar="S", help="masks from: default (packaged U-Net), otsu, or a .safetensors")
    m.add_argument("--no-style", action="store_true", help="store no style vectors (smaller index)")
    m.add_argument("--no-masks", action="store_true", help="store no lesion masks")
    m.add_argument("--preset", choices=sorted(PRESETS), help="paper: needs --weights and --segmenter from "
                   "`train ... --preset paper` runs (see `dermsearch presets`)")
    ix.add_argument("--batch-size", type=int, default=16)
    ix.add_argument("--device", default="auto", help=DEVICE_HELP)
    ix.add_argument("--backend", choices=BACKENDS, default="auto", help="run the networks with torch or ONNX "
                    "Runtime (exported once to ~/.cache/dermsearch; same vectors to float32 rounding, "
                    "~3x faster on CPU); auto: onnx on CPU when onnxruntime is installed (default)")
    ix.add_argument("--commit-every", type=int, default=128, help="images per atomic commit (default 128)")
    ix.add_argument("--dask", metavar="SCHEDULER_ADDRESS", help="extract on the workers of this Dask cluster "
                    "(e.g. tcp://10.0.0.5:8786); this process writes the index (docs/distributed.md)")
    ix.add_argument("--dask-chunk", type=int, default=64, help="images per Dask task (default 64)")
    ix.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    s = sub.add_parser("search", help="find the most similar indexed images for a query image")
    s.add_argument("index", type=Path, metavar="DIR")
    s.add_argument("query", metavar="QUERY_IMAGE")
    s.add_argument("-k", type=int, default=5, help="results per measure; 0 ranks every candidate")
    s.add_argument("--measure", nargs="+", choices=MEASURES, metavar="NAME",
                   help=f"measures to compute (default all): {', '.join(MEASURES)}")
    s.add_argument("--exclude-id", nargs="+", default=[], metavar="ID", help="leave these ids out of the candidates")
    s.add_argument("--where", action="append", default=[], metavar="COL=V1,V2",
                   help="keep candidates whose COL is one of the values (e.g. diagnosis=mel,nv; sex=female)")
    s.add_argument("--range", action="append", default=[], metavar="COL=LO:HI",
                   help="keep candidates with LO <= COL <= HI (e.g. age=30:60; either end may be empty)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--device", default="auto", help=DEVICE_HELP)
    s.add_argument("--html", type=Path, metavar="FILE", help="write an HTML contact sheet")
    s.add_argument("--no-explain", action="store_true", help="leave out each hit's per-layer style loss and mask "
                   "overlap (the 'explain' block; never computed for -k 0)")
    s.add_argument("--fast", action="store_true", help="fast mode for large archives: compressed vectors pick "
                   "candidates, exact vectors re-rank them (needs 'dermsearch optimize DIR' first)")

    op = sub.add_parser("optimize", help="write the fast-mode files of an index (PCA-compressed vectors, "
                        "memory-mapped exact rows); also makes opening the index instant",
                        description="Fast mode reads a few hundred bytes per image per query instead of 329 KB "
                                    "and re-ranks its candidates exactly; see docs/performance.md. Rerun after "
                                    "adding or removing images.")
    op.add_argument("index", type=Path, metavar="DIR")
    op.add_argument("--style-dims", type=int, default=FastConfig.style_dims, help="PCA components of the style "
                    f"vectors (default {FastConfig.style_dims})")
    op.add_argument("--feature-dims", type=int, default=FastConfig.feature_dims,
                    help=f"PCA components of the feature vectors (default {FastConfig.feature_dims})")
    op.add_argument("--mask-grid", type=int, default=FastConfig.mask_grid,
                    help=f"mask cells per side for the Dice estimate (default {FastConfig.mask_grid})")
    op.add_argument("--candidates", type=int, default=FastConfig.candidates,
                    help=f"rows per measure re-ranked exactly (default {FastConfig.candidates})")

    ev = sub.add_parser("evaluate", help="label-based retrieval metrics of every measure, with bootstrap CIs",
                        description="Rank all candidates for each query by each measure (the query and images of "
                                    "the same lesion_id excluded) and report P@k, macro-P@k, per-diagnosis and "
                                    "melanoma P@k, mAP@k and the melanoma AUC of a neighbour vote.")
    ev.add_argument("index", type=Path, metavar="DIR")
    ev.add_argument("--queries", type=Path, metavar="CSV", help="external labelled query images (a labels CSV); "
                    "default: rows of the index")
    ev.add_argument("--split-csv", type=Path, metavar="CSV", help="image_id,split file (e.g. ham10000/split.csv)")
    ev.add_argument("--query-split", nargs="+", metavar="NAME", help="index rows of these splits are the queries")
    ev.add_argument("--candidate-split", nargs="+", metavar="NAME",
                    help="index rows of these splits are the candidates")
    ev.add_argument("-k", type=int, default=5)
    ev.add_argument("--vote-k", type=int, default=16, help="neighbours in the melanoma vote (default 16)")
    ev.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    ev.add_argument("--choose-on", nargs="+", metavar="SPLIT", help="name the headline measure by a rule fixed in "
                    "advance: the best --choose-metric for these index rows (e.g. val) as queries against the "
                    "candidates outside them (needs --split-csv)")
    ev.add_argument("--choose-metric", default="macro_p@k", metavar="METRIC",
                    help="the metric --choose-on maximises (default macro_p@k, k as given by -k)")
    ev.add_argument("--headline", choices=MEASURES, metavar="MEASURE", help="headline this measure (fixed in advance)")
    ev.add_argument("--ci-unit", choices=["lesion", "image"], default="lesion", help="what the bootstrap resamples: "
                    "lesions (all images of a lesion together; default) or single images")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--diagnosis-map", metavar="A=B,C=D", help="rename query diagnoses to the index's labels "
                    "(e.g. nevus=nv,melanoma=mel)")
    ev.add_argument("--json", action="store_true", help="print the report as JSON")
    ev.add_argument("--out", type=Path, metavar="REPORT_DIR", help="write report.json, report.md and PNG plots")
    ev.add_argument("--rating-sheet", type=Path, metavar="DIR", help="also write a blinded rating sheet here")
    ev.add_argument("--rating-queries", type=int, default=50, help="queries on the rating sheet (paper: 50)")
    ev.add_argument("--ratings", type=Path, metavar="CSV", help="score a filled rating sheet (needs --rating-key)")
    ev.add_argument("--rating-key", type=Path, metavar="CSV", help="the key.csv written with the rating sheet")
    ev.add_argument("--device", default="auto", help=DEVICE_HELP)
    ev.add_argument("--quiet", "-q", action="store_true")

    fw = sub.add_parser("fit-gram-weights", help="fit the style measure's layer weights on labelled index rows",
                        description="Fit non-negative layer weights beta_l of the style loss that maximise the "
                                    "style measure's macro-P@k for the query rows against the candidate rows "
                                    "(same lesion excluded), and write them as JSON for 'index --gram-weights "
                                    "FILE'. Fit on val, report test once.")
    fw.add_argument("index", type=Path, metavar="DIR")
    fw.add_argument("--split-csv", required=True, type=Path, metavar="CSV", help="image_id,split file")
    fw.add_argument("--query-split", nargs="+", default=["val"], metavar="NAME", help="default: val")
    fw.add_argument("--candidate-split", nargs="+", default=["train"], metavar="NAME", help="default: train")
    fw.add_argument("-k", type=int, default=5)
    fw.add_argument("--out", required=True, type=Path, metavar="JSON")

    tr = sub.add_parser("train", help="train a model")
    trs = tr.add_subparsers(dest="what", required=True)
    ts = trs.add_parser("segmenter", help="train U-Net / RU-Net / R2U-Net with focal Tversky loss",
                        description="Train a lesion segmenter on image/mask pairs of a labels CSV (mask_path "
                                    "column). The checkpoint with the best val Dice is kept; rerunning the same "
                                    "command resumes.")
    ts.add_argument("--labels", required=True, type=Path, metavar="CSV")
    ts.add_argument("--split", type=Path, metavar="CSV", help="image_id,split file (e.g. ham10000/split.csv)")
    ts.add_argument("--out", required=True, type=Path, metavar="DIR", help="run directory (weights, config, history)")
    ts.add_argument("--arch", choices=["unet", "runet", "r2unet"])
    ts.add_argument("--depth", type=int)
    ts.add_argument("--width", type=int)
    ts.add_argument("--t", type=int, help="recurrence steps (runet, r2unet)")
    ts.add_argument("--image-size", type=int)
    ts.add_argument("--epochs", type=int)
    ts.add_argument("--batch-size", type=int)
    ts.add_argument("--lr", type=float)
    ts.add_argument("--alpha", type=float, help="Tversky weight of false negatives")
    ts.add_argument("--beta", type=float, help="Tversky weight of false positives")
    ts.add_argument("--gamma", type=float, help="focal exponent: loss = (1 - TI)^(1/gamma)")
    ts.add_argument("--no-augment", action="store_true")
    ts.add_argument("--seed", type=int)
    ts.add_argument("--device", help=DEVICE_HELP + " (default auto)")
    ts.add_argument("--limit", type=int, default=0, help="use only the first N pairs per split (smoke runs)")
    ts.add_argument("--preset", default="default", choices=sorted(PRESETS),
                    help="default (U-Net w16 at 128 px, what ships) or paper "
                    "(R2U-Net at 384 px); explicit flags override it")
    ts.add_argument("--dry-run", action="store_true", help="print parameters, memory and measured seconds per batch")
    ts.add_argument("--dry-run-steps", type=int, default=3, metavar="N")
    ts.add_argument("--quiet", "-q", action="store_true")

    tc = trs.add_parser("classifier", help="train the EfficientNet ensemble (two phases, focal loss)",
                        description="Phase one trains each member alone with focal loss; phase two freezes them "
                                    "and trains GAP -> BN -> concat -> Dense(1024, SELU) -> head. The best "
                                    "checkpoint by val metric is kept; rerunning the same command resumes.")
    tc.add_argument("--labels", required=True, type=Path, metavar="CSV")
    tc.add_argument("--split", type=Path, metavar="CSV", help="image_id,split file (e.g. ham10000/split.csv)")
    tc.add_argument("--out", required=True, type=Path, metavar="DIR", help="run directory (weights, config, history)")
    tc.add_argument("--target", choices=["melanoma", "diagnosis"],
                    help="diagnosis (default): softmax over the label column; melanoma: sigmoid vs rest (the paper's)")
    tc.add_argument("--label-column", help="default: melanoma / diagnosis, after --target")
    tc.add_argument("--backbone", choices=list_backbones())
    tc.add_argument("--weights", choices=["imagenet", "random"], help="member initialisation")
    tc.add_argument("--members", type=int)
    tc.add_argument("--trainable-stages", type=int, metavar="N",
                    help="train the last N of the 7 stages; the others are frozen and shared (7: whole members)")
    tc.add_argument("--image-size", type=int)
    tc.add_argument("--epochs", type=int, help="phase one epochs per member")
    tc.add_argument("--head-epochs", type=int, help="phase two epochs")
    tc.add_argument("--batch-size", type=int)
    tc.add_argument("--lr", type=float)
    tc.add_argument("--head-lr", type=float)
    tc.add_argument("--focal-alpha", type=float, help="binary: weight of the positive class")
    tc.add_argument("--focal-gamma", type=float)
    tc.add_argument("--class-weights", action="store_true", default=None,
                    help="diagnosis: inverse-frequency class weights")
    tc.add_argument("--balanced", action="store_true", default=None, help="class-balanced sampling")
    tc.add_argument("--augment", choices=["x7", "online", "none"],
                    help="x7: the paper's offline expansion (default); online: random per batch")
    tc.add_argument("--diversity", choices=["bootstrap", "fold", "seed"],
                    help="how members differ (default bootstrap: bagging)")
    tc.add_argument("--metric-loss", choices=["none", "supcon", "proxy-anchor"],
                    help="phase two: a metric-learning loss on the search feature beside the head's focal loss")
    tc.add_argument("--metric-weight", type=float, help="weight of the metric loss (default 1)")
    tc.add_argument("--metric-temperature", type=float, help="supcon temperature (default 0.1)")
    tc.add_argument("--ema", type=float, metavar="DECAY", help="phase two: moving average of the weights (0: off)")
    tc.add_argument("--head-select", choices=["balanced_accuracy", "retrieval"],
                    help="phase two keeps the epoch best by the head's val balanced accuracy or by the val "
                         "macro-P@5 of the feature's nearest training images")
    tc.add_argument("--colour", choices=["none", "shades-of-gray"],
                    help="colour constancy on the network's input (indexing then applies it too)")
    tc.add_argument("--tta", type=int, choices=[1, 2, 4],
                    help="phase two on the members' pooled vectors averaged over 1, 2 or 4 flips/quarter turns; "
                         "indexing then averages the same views")
    tc.add_argument("--init-members", metavar="ENSEMBLE",
                    help="reuse the members of this ensemble file ('default': the packaged one) and train "
                         "phase two only")
    tc.add_argument("--cache", type=Path, metavar="DIR", help="frozen-stage cache (default OUT/cache; shareable)")
    tc.add_argument("--seed", type=int)
    tc.add_argument("--device", help=DEVICE_HELP + " (default auto)")
    tc.add_argument("--limit", type=int, help="use only the first N images per split (smoke runs)")
    tc.add_argument("--preset", default="default", choices=sorted(PRESETS),
                    help="default (the shipped CPU configuration) or paper "
                    "(5 x EfficientNet-B6 at 384 px); explicit flags override it; see `dermsearch presets`")
    tc.add_argument("--dry-run", action="store_true", help="print parameters, memory and measured seconds per "
                    "batch from a few real steps on this device, then the estimated training time; train nothing")
    tc.add_argument("--dry-run-steps", type=int, default=3, metavar="N")
    tc.add_argument("--quiet", "-q", action="store_true")

    ec = sub.add_parser("eval-classifier", help="melanoma AUC of a trained ensemble's head and of each member")
    ec.add_argument("weights", nargs="?", default="default", help="default (packaged) or a .safetensors / run dir")
    ec.add_argument("--labels", required=True, type=Path, metavar="CSV")
    ec.add_argument("--split", type=Path, metavar="CSV")
    ec.add_argument("--on", metavar="NAME", help="split to evaluate (default: every row)")
    ec.add_argument("--device", default="auto", help=DEVICE_HELP)
    ec.add_argument("--limit", type=int, default=0)

    es = sub.add_parser("eval-segmenter", help="Dice and Jaccard of a segmenter against ground-truth masks")
    es.add_argument("--labels", required=True, type=Path, metavar="CSV")
    es.add_argument("--split", type=Path, metavar="CSV")
    es.add_argument("--on", nargs="+", default=None, metavar="NAME", help="splits to evaluate (default: all rows)")
    es.add_argument("--segmenter", nargs="+", default=["default"], metavar="S",
                    help="default (packaged), otsu, a run directory or a .safetensors file; several compare")
    es.add_argument("--size", type=int, default=128, help="evaluation side in pixels (masks: nearest-neighbour)")
    es.add_argument("--json", action="store_true")

    sv = sub.add_parser("serve", help="run the web app and REST API (FastAPI) on an index")
    sv.add_argument("index", type=Path, metavar="DIR")
    sv.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--max-upload-mb", type=float, default=20.0)
    sv.add_argument("--allowed-host", action="append", default=[], metavar="NAME", help="a name this server may be "
                    "reached by (Host header), besides localhost, 127.0.0.1, ::1 and --host; repeatable")
    sv.add_argument("--auth", choices=["auto", "on", "off"], default="auto", help="require an API token: auto "
                    "(default) when the index has active tokens ('dermsearch token create'); a non-loopback --host "
                    "always requires them")
    sv.add_argument("--split-csv", type=Path, metavar="CSV", help="image_id,split file for --query-split")
    sv.add_argument("--query-split", nargs="+", metavar="NAME", help="/rate draws its queries from these splits only")
    sv.add_argument("--concurrency", type=int, default=2, help="searches computed at once (default 2)")
    sv.add_argument("--queue", type=int, default=8, help="searches waiting beyond those; more get 429 (default 8)")
    sv.add_argument("--rate-limit", type=int, default=120, metavar="N", help="searches per minute per client (the "
                    "token's user, else the address); 0: no limit (default 120)")
    sv.add_argument("--device", default="auto", help=DEVICE_HELP)
    sv.add_argument("--fast", action="store_true", help="fast mode (see 'search --fast')")
    sv.add_argument("--dask", metavar="SCHEDULER_ADDRESS", help="shard the index across this Dask cluster's "
                    "workers and search there (exact, same results as local)")

    tk = sub.add_parser("token", help="API tokens for 'dermsearch serve' (hashed at rest)",
                        description="Create, list or revoke the API tokens that 'dermsearch serve' accepts for an "
                                    "index. A token is printed once, when created; only its SHA-256 is stored.")
    tks = tk.add_subparsers(dest="action", required=True)
    tc_ = tks.add_parser("create", help="a new token for a user (printed once)")
    tc_.add_argument("index", type=Path, metavar="DIR")
    tc_.add_argument("--name", required=True, help="the user (a rater's identity in the ratings)")
    tc_.add_argument("--role", choices=["rater", "admin"], default="rater",
                     help="rater (search, rate) or admin (also export ratings and keys)")
    tr_ = tks.add_parser("revoke", help="revoke a user's tokens (effective at once)")
    tr_.add_argument("index", type=Path, metavar="DIR")
    tr_.add_argument("--name", required=True)
    tl_ = tks.add_parser("list", help="users, roles, dates (never the tokens)")
    tl_.add_argument("index", type=Path, metavar="DIR")

    ex = sub.add_parser("export-onnx", help="export an index's networks to ONNX (for ONNX Runtime elsewhere)")
    ex.add_argument("index", type=Path, metavar="DIR")
    ex.add_argument("--out", type=Path, required=True, metavar="OUT_DIR")

    inf = sub.add_parser("info", help="facts about an index")
    inf.add_argument("index", type=Path, metavar="DIR")
    sub.add_parser("backbones", help="list the registered backbones")
    pr = sub.add_parser("presets", help="list the presets and what they set")
    pr.add_argument("--json", action="store_true")
    return p


def _filters(args) -> Filters:
    equals, ranges = {}, {}
    for item in args.where:
        col, sep, values = item.partition("=")
        if not sep or not col or not values:
            raise UsageError(f"--where expects COL=V1,V2, got {item!r}")
        equals[col.strip()] = tuple(v.strip() for v in values.split(","))
    for item in args.range:
        col, sep, bounds = item.partition("=")
        lo, sep2, hi = bounds.partition(":")
        try:
            ranges[col.strip()] = (float(lo) if lo.strip() else None, float(hi) if hi.strip() else None)
        except ValueError:
            sep2 = ""
        if not sep or not sep2 or not col:
            raise UsageError(f"--range expects COL=LO:HI with numbers, got {item!r}")
    return Filters(equals, ranges)


def _cmd_index(args) -> int:
    if args.check:
        index = Index.open(args.index)
        problems = index.check()
        for p in problems:
            err.print(f"[red]problem:[/red] {p}")
        print(f"{args.index}: {len(index)} images, version {index.version}: "
              + ("OK" if not problems else f"{len(problems)} problem(s)"))
        return 1 if problems else 0
    if args.remove:
        index = Index.open(args.index)
        with index.writing():
            removed, unknown = index.remove(args.remove)
        for i in unknown:
            err.print(f"[yellow]not in the index:[/yellow] {i}")
        print(f"removed {len(removed)} image(s); {len(index)} remain")
        return 0
    if not args.source:
        raise UsageError("index needs a SOURCE (or --remove / --check)")

    overrides = {k: v for k, v in {
        "backbone": args.backbone, "weights": args.weights, "image_size": args.image_size,
        "mask_size": args.mask_size, "gram_weights": args.gram_weights, "segmenter": args.segmenter,
        "gram_pool": args.gram_pool, "gram_margin": args.gram_margin, "gram_norm": args.gram_norm,
        "style": False if args.no_style else None, "masks": False if args.no_masks else None,
    }.items() if v is not None}
    if args.no_masks and not args.no_style and "gram_pool" not in overrides:
        # lesion-aware Grams pool over the masks: without masks, the paper's whole-image Grams
        overrides = {**{k: v for k, v in PAPER_STYLE.items() if k not in overrides}, **overrides}
        err.print("note: --no-masks: style uses the paper's whole-image Gram matrices", highlight=False)
    if args.preset:
        preset = get_preset(args.preset)
        missing = [f"--{r}" for r in preset.index.get("requires", []) if getattr(args, r) is None]
        if missing:
            raise UsageError(f"--preset {args.preset} needs {' and '.join(missing)}: the ensemble from "
                             f"`dermsearch train classifier --preset {args.preset}` and the best.safetensors from "
                             f"`dermsearch train segmenter --preset {args.preset}`")
        overrides = {**{k: v for k, v in preset.index.items() if k != "requires"}, **overrides}
    if (args.index / "dermsearch.json").exists():
        # An existing index keeps its model; explicit options must agree with it (checked by fingerprint).
        stored = Index.open(args.index).manifest["extractor"]
        config = ExtractorConfig.from_dict({**stored, **overrides}) if overrides else None
    else:
        config = ExtractorConfig.for_weights(overrides.pop("weights", "default"), **overrides)

    def on_problem(p):  # printed with or without the progress bar
        progress.console.print(f"[yellow]skipped[/yellow] {p.where}: {p.reason}", highlight=False)

    progress = Progress(TextColumn("indexing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=err, disable=args.quiet, transient=False)
    with progress:
        task = progress.add_task("index", total=None)
        build_config = BuildConfig(batch_size=args.batch_size, commit_every=args.commit_every, device=args.device,
                                   backend=args.backend)
        def show(done, total):
            progress.update(task, completed=done, total=total)

        if args.dask:
            from ..index.distributed import build_index_dask

            report = build_index_dask(args.source, args.index, args.dask, config, build_config,
                                      chunk_size=args.dask_chunk, on_problem=on_problem, progress=show)
        else:
            report = build_index(args.source, args.index, config, build_config, on_problem=on_problem, progress=show)
    print(f"{report.index}: added {report.added}, already indexed {report.already_indexed}, "
          f"skipped {len(report.problems)} (of {report.found} found) in {report.seconds:.1f} s "
          f"({report.images_per_second:.1f} images/s); index holds {len(Index.open(args.index))} images")
    return 0


def _cmd_search(args) -> int:
    searcher = Searcher(args.index, device=args.device, mode="fast" if args.fast else "exact")
    try:
        query = searcher.encode(args.query)
    except ImageError as e:
        raise UsageError(f"query {args.query}: {e}") from None
    explain = args.k > 0 and not args.no_explain and (args.json or args.html is not None)
    result = searcher.search(query, k=args.k, measures=args.measure, exclude_ids=args.exclude_id,
                             filters=_filters(args), explain=explain)
    if args.json:
        json.dump(result.to_json(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print_tables(result)
    if args.html:
        overlays = {}
        if explain:
            for hits in result.results.values():
                for h in hits:
                    if h.id not in overlays:
                        overlays[h.id] = searcher.mask_overlay(query, h.id)
        write_contact_sheet(result, args.query, args.html, overlays)
        if not args.json:
            print(f"contact sheet: {args.html}")
    return 0


def _cmd_evaluate(args) -> int:
    from ..evaluate import EvaluationConfig, Evaluator, read_split
    from ..evaluate.rating import score_ratings, write_rating_sheet
    from ..evaluate.report import to_markdown, write_report

    if args.ratings:
        if not args.rating_key:
            raise UsageError("--ratings needs --rating-key (the key.csv written with the sheet)")
        scores = score_ratings(args.rating_key, args.ratings, args.bootstrap, args.seed)
        if args.json:
            print(json.dumps(scores, indent=1))
        else:
            for m, v in scores.items():
                print(f"{m:10s} success rate {100 * v['success_rate']:.1f}% "
                      f"(95% CI {100 * v['ci95'][0]:.1f}-{100 * v['ci95'][1]:.1f}) over {v['queries']} queries")
        return 0
    evaluator = Evaluator(Searcher(args.index, device=args.device))
    snap = evaluator.searcher.snapshot
    split = read_split(args.split_csv) if args.split_csv else None
    if (args.query_split or args.candidate_split) and split is None:
        raise UsageError("--query-split / --candidate-split need --split-csv")

    def in_splits(names):
        return [i for i in snap.ids if split.get(i) in set(names)]

    candidates = in_splits(args.candidate_split) if args.candidate_split else None
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=err, disable=args.quiet)
    with progress:
        if args.queries:
            dmap = dict(p.split("=", 1) for p in args.diagnosis_map.split(",")) if args.diagnosis_map else None
            task = progress.add_task("extracting queries", total=None)
            queries = evaluator.queries_from_csv(
                args.queries, dmap, on_problem=lambda p: err.print(f"skipped {p.where}: {p.reason}"),
                progress=lambda d, t: progress.update(task, completed=d, total=t))
        else:
            ids = in_splits(args.query_split) if args.query_split else None
            queries = evaluator.queries_from_index(ids)
        if len(queries) == 0:
            raise UsageError("no queries")
        task = progress.add_task("ranking", total=len(queries))
        report = evaluator.run(queries, candidates, EvaluationConfig(
            k=args.k, vote_k=args.vote_k, bootstrap=args.bootstrap, seed=args.seed, ci_unit=args.ci_unit),
            progress=lambda d, t: progress.update(task, completed=d))
    if args.choose_on or args.headline:
        _headline(args, evaluator, report, split, candidates)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print(to_markdown(report))
        print(f"{report.queries} queries x {len(report.measures)} measures x {report.candidates} candidates "
              f"ranked in {report.ranking_seconds:.1f} s ({report.seconds:.1f} s with the bootstrap CIs)")
    if args.out:
        index = evaluator.searcher.index
        extra = {"command": sys.argv, "index": str(args.index), "index_fingerprint": index.fingerprint,
                 "extractor": index.manifest["extractor"]}
        write_report(report, args.out, extra)
        if not args.json:
            print(f"report written to {args.out}/ (report.json, report.md, measures.png, per_diagnosis.png)")
    if args.rating_sheet:
        write_rating_sheet(report, dict(zip(snap.ids, snap.paths)), args.rating_sheet, args.rating_queries, args.seed)
        if not args.json:
            print(f"rating sheet written to {args.rating_sheet}/sheet.html (key: {args.rating_sheet}/key.csv)")
    return 0


def _headline(args, evaluator, report, split, candidates) -> None:
    """Name the report's headline measure: given (--headline), or chosen on other queries (--choose-on)."""
    from ..evaluate import EvaluationConfig

    metric = args.choose_metric.replace("@k", f"@{args.k}")
    if args.headline:
        if args.choose_on:
            raise UsageError("give either --headline or --choose-on, not both")
        report.set_headline(args.headline, metric, "named with --headline before the evaluation")
        return
    if split is None:
        raise UsageError("--choose-on needs --split-csv")
    chosen = set(args.choose_on)
    if args.query_split and chosen & set(args.query_split):
        raise UsageError(f"--choose-on {' '.join(args.choose_on)} overlaps the query splits: choose on other "
                         "queries than those reported")
    ids = evaluator.searcher.snapshot.ids
    pool = candidates if candidates is not None else list(ids)
    evaluator.headline_from(report, [i for i in ids if split.get(i) in chosen],
                            [i for i in pool if split.get(i) not in chosen], metric,
                            EvaluationConfig(k=args.k, vote_k=args.vote_k, seed=args.seed), "+".join(args.choose_on))


def _cmd_fit_gram_weights(args) -> int:
    from ..evaluate import read_split
    from ..evaluate.gram_weights import fit_index_gram_weights, save_gram_weights

    r = fit_index_gram_weights(Index.open(args.index), read_split(args.split_csv), args.query_split,
                               args.candidate_split, args.k)
    save_gram_weights(args.out, r.fit, r.info)
    print(f"style macro-P@{args.k} on {'+'.join(args.query_split)} vs {'+'.join(args.candidate_split)}: "
          f"{r.before:.3f} with the index's weights, {r.fit.score:.3f} fitted "
          f"({r.held_out['mean']:.3f} held out in 2-fold cross-validation over lesions)")
    for e, share in zip(r.layout, r.fit.shares):
        print(f"  stage {e['stage']} {e['region']:6s} C={e['channels']:4d}  share of the loss {share:.3f}")
    flags = f" --gram-pool {r.info['gram_pool']} --gram-margin {r.info['gram_margin']}" \
        if r.info["gram_pool"] != "image" else ""
    flags += f" --gram-norm {r.info['gram_norm']}" if r.info["gram_norm"] != "none" else ""
    print(f"weights written to {args.out}; use them with: dermsearch index SOURCE --index NEW_DIR "
          f"--gram-weights {args.out}{flags}")
    return 0


def _explicit(args, cls, skip: tuple[str, ...] = ()) -> dict:
    """The flags given on the command line (argparse default None) that name fields of ``cls``."""
    names = {f.name for f in dataclasses.fields(cls)} - set(skip)
    out = {}
    for name in names:
        v = getattr(args, name, None)
        if v is not None:
            out[name] = str(v) if isinstance(v, Path) else v
    return out


def _cmd_train(args) -> int:
    preset = get_preset(args.preset)
    if args.what == "classifier":
        return _cmd_train_classifier(args, preset)
    from ..train.segmenter import SegTrainConfig, dry_run_segmenter, train_segmenter

    given = _explicit(args, SegTrainConfig)
    if args.no_augment:
        given["augment"] = False
    cfg = SegTrainConfig(**{**preset.segmenter, **given})
    if args.dry_run:
        return _print_dry_run(dry_run_segmenter(cfg, args.dry_run_steps))
    result = train_segmenter(cfg, args.out, log=lambda m: err.print(m, highlight=False), progress=not args.quiet)
    print(f"best val Dice {result['best_val_dice']:.4f}; weights: {args.out / 'best.safetensors'}")
    return 0


def _print_dry_run(estimate) -> int:
    err.print(estimate.describe(), highlight=False)
    print(json.dumps(estimate.to_json()))
    return 0


def _cmd_train_classifier(args, preset) -> int:
    from ..train.classifier import ClassifierTrainConfig, dry_run_classifier, train_classifier

    cfg = ClassifierTrainConfig(**{**preset.classifier, **_explicit(args, ClassifierTrainConfig)})
    if args.dry_run:
        return _print_dry_run(dry_run_classifier(cfg, args.dry_run_steps))
    metrics = train_classifier(cfg, args.out, log=lambda m: err.print(m, highlight=False), progress=not args.quiet,
                               cache_dir=args.cache)
    print(json.dumps({"val": metrics["val"]["ensemble"], "weights": str(args.out / "ensemble.safetensors")}))
    return 0


def _cmd_presets(args) -> int:
    from ..train.classifier import ClassifierTrainConfig
    from ..train.segmenter import SegTrainConfig

    resolved = {}
    for name, p in PRESETS.items():
        resolved[name] = {
            "description": p.description,
            "train classifier": ClassifierTrainConfig(labels="LABELS", **p.classifier).to_dict(),
            "train segmenter": json.loads(json.dumps(dataclasses.asdict(SegTrainConfig(labels="LABELS",
                                                                                       **p.segmenter)))),
            "index": p.index, "notes": list(p.notes)}
    if args.json:
        print(json.dumps(resolved, indent=1))
        return 0
    for name, r in resolved.items():
        p = PRESETS[name]
        print(f"{name}: {r['description']}")
        print("  train classifier: " + ", ".join(f"{k}={v}" for k, v in p.classifier.items()))
        print("  train segmenter:  " + ", ".join(f"{k}={v}" for k, v in p.segmenter.items()))
        print("  index:            " + ", ".join(f"{k}={v}" for k, v in p.index.items()))
        for note in p.notes:
            print(f"  note: {note}")
    print("Any flag given explicitly overrides the preset; `--json` prints every resolved setting.")
    return 0


def _cmd_eval_classifier(args) -> int:
    from ..evaluate.classifier import evaluate_classifier
    from ..models.ensemble import default_ensemble_path

    weights = default_ensemble_path() if args.weights == "default" else Path(args.weights)
    if weights.is_dir():
        weights = weights / "ensemble.safetensors"
    evaluate_classifier(weights, args.labels, args.split, args.on, args.limit, device=args.device,
                        log=lambda m: print(m))
    return 0


def _cmd_eval_segmenter(args) -> int:
    import torch

    from ..evaluate.masks import evaluate_masks
    from ..evaluate.metrics import bootstrap_ci
    from ..extract.datasets import load_pairs
    from ..models.baseline_segmenter import OtsuSegmenter
    from ..models.learned_segmenter import default_segmenter_path
    from ..train.segmenter import load_segmenter, predict_masks

    data = load_pairs(args.labels, args.split, tuple(args.on) if args.on else None, args.size)
    rows = {}
    for name in args.segmenter:
        if name == "otsu":
            seg = OtsuSegmenter()
            pred = torch.from_numpy(seg.segment_batch(data.images.permute(0, 2, 3, 1).numpy()))[:, None]
        else:
            model, _ = load_segmenter(default_segmenter_path() if name == "default" else name)
            if model.multiple and args.size % model.multiple:
                raise UsageError(f"--size must be a multiple of {model.multiple} for {name}")
            pred = predict_masks(model, data.images)
        rows[name], dice = evaluate_masks(pred, data.masks)
        rows[name]["dice_ci95"] = list(bootstrap_ci(lambda i, d=dice: d[i].mean(), len(dice), 1000, seed=0))
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for name, r in rows.items():
            print(f"{name}: Dice {r['dice']:.4f} (95% CI {r['dice_ci95'][0]:.4f}-{r['dice_ci95'][1]:.4f}, "
                  f"median {r['dice_median']:.4f}), Jaccard {r['jaccard']:.4f} on {r['images']} images")
    return 0


def _cmd_optimize(args) -> int:
    from ..search.fast import optimize

    config = FastConfig(style_dims=args.style_dims, feature_dims=args.feature_dims, mask_grid=args.mask_grid,
                        candidates=args.candidates)
    t0 = time.perf_counter()
    fast = optimize(Index.open(args.index), config, progress=lambda m: err.print(m))
    info = fast.info
    err.print(f"fast mode ready for version {info['index_version']} ({len(fast)} images) in "
              f"{time.perf_counter() - t0:.1f} s: style PCA {fast.a['style_basis'].shape[0]} dims "
              f"({100 * info['style_explained_variance']:.1f}% of the variance), feature PCA "
              f"{fast.a['feature_basis'].shape[0]} dims ({100 * info['feature_explained_variance']:.1f}%); "
              f"{fast.bytes_scanned_per_query / max(1, len(fast)):.0f} bytes scanned per image per query")
    return 0


def _cmd_export_onnx(args) -> int:
    from ..extract import Extractor
    from ..extract.onnx import export_onnx

    index = Index.open(args.index)
    extractor = Extractor(index.extractor_config)
    index.check_fingerprint(extractor.fingerprint, extractor.config)
    out = export_onnx(extractor, args.out)
    info = json.loads((out / "onnx.json").read_text())
    print(f"exported model {info['fingerprint']} to {out}: extractor.onnx (pixels [B,3,{info['image_size']},"
          f"{info['image_size']}] 0..255 -> {', '.join(info['outputs'])})"
          + (", segmenter.onnx" if info["segmenter"] else ""))
    return 0


def _cmd_info(args) -> int:
    index = Index.open(args.index)
    m = index.manifest
    snap = index.snapshot(vectors=False)
    diagnoses: dict[str, int] = {}
    for d in snap.diagnosis:
        diagnoses[d or "(none)"] = diagnoses.get(d or "(none)", 0) + 1
    print(json.dumps({"directory": str(args.index), "images": len(snap), "version": snap.version,
                      "fingerprint": m["fingerprint"], "extractor": m["extractor"],
                      "feature_dim": m["feature_dim"], "style_dim": m["style_dim"], "mask_size": m["mask_size"],
                      "diagnoses": dict(sorted(diagnoses.items()))}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {
        "index": _cmd_index, "search": _cmd_search, "optimize": _cmd_optimize, "evaluate": _cmd_evaluate,
        "train": _cmd_train, "fit-gram-weights": _cmd_fit_gram_weights,
        "eval-segmenter": _cmd_eval_segmenter, "eval-classifier": _cmd_eval_classifier,
        "presets": _cmd_presets, "serve": cmd_serve, "token": cmd_token, "info": _cmd_info,
        "export-onnx": _cmd_export_onnx,
        "backbones": lambda _: print("\n".join(list_backbones())) or 0,
    }
    try:
        return commands[args.command](args)
    except (UsageError, IndexError_, SourceError, WeightsNotFoundError, FastModeMissing, ShardTooLarge, KeyError,
            ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        err.print(f"dermsearch {args.command}: error: {msg}", highlight=False)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted; committed rows are kept, rerun the command to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
