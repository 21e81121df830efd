"""Names of the choices that configs, the CLI and the web app share, in a module that imports
nothing, so that building the command line never loads a network library."""

from __future__ import annotations

__all__ = ["GRAM_POOLS", "GRAM_NORMS", "BACKENDS", "COLOUR_METHODS", "TTA_VIEWS", "MEASURES", "SEARCH_MODES",
           "DEVICE_HELP", "METRIC_LOSSES", "HEAD_SELECT", "DIVERSITY", "PRECISIONS", "AUTH_MODES", "ROLES",
           "TTA_COUNTS", "BACKBONE_INITS", "TARGETS", "AUGMENTS", "SEG_ARCHS", "EXCLUDE_SAME", "FEATURES",
           "CI_UNITS", "STORAGE_PRECISIONS"]

# Gram pooling regions: the whole image (paper), the dilated lesion mask, or lesion then skin.
GRAM_POOLS = ("image", "lesion", "lesion+skin")
# Entry-wise normalisation of each Gram before the layer weights.
GRAM_NORMS = ("none", "l2", "sqrt", "sqrt+l2")
# How the networks run: torch, ONNX Runtime, or auto (ONNX Runtime on CPU when the model is exported or can be).
BACKENDS = ("torch", "onnx", "auto")
# Colour constancy on the network's input.
COLOUR_METHODS = ("none", "shades-of-gray")
# Test-time views of the feature, in the order they are added (1, 2 or 4 of them).
TTA_VIEWS = ("identity", "hflip", "vflip", "rot90")
# How many of them may be averaged.
TTA_COUNTS = (1, 2, 4)
# An untrained backbone's initialisation (extraction's --weights, a training member's start).
BACKBONE_INITS = ("imagenet", "random")
# The stored feature: one backbone's pooled vector, or the ensemble's Dense+SELU vector over its members.
FEATURES = ("pooled", "ensemble")
# The ten measures (SPEC section 3), in report order; search/measures.py defines them.
MEASURES = ("euclidean", "cosine", "style", "dice", "i1_ed", "i1_cd", "i1_ecd", "i1_se", "i1_sc", "i1_sd")

SEARCH_MODES = ("exact", "fast", "certified")
# Fast mode's re-rank rows on disk (`optimize --precision`): auto (float32 below 100,000 rows, int8 from
# there), float32 (the exact rows, not copied), fp16, int8 (per row and Gram scales, certified mode's copy),
# int6 (6-bit codes after a random-sign DCT, deflate-coded per row: 48.2 KB a row, search/style_codec.py).
STORAGE_PRECISIONS = ("auto", "float32", "fp16", "int8", "int6")
# Fast mode's scanned codes that no bound relies on (the style residual sketches, the mask cells;
# `optimize --code-precision`): auto (float32 below 100,000 rows, fp16 from there), fp16 (half the bytes,
# a faster product) or float32 (as before).
CODE_PRECISIONS = ("auto", "fp16", "float32")
# Evaluation: what is left out of a query's candidates besides itself (its lesion's or its patient's images).
EXCLUDE_SAME = ("lesion", "patient")
# What an evaluation's bootstrap resamples: lesions (all of a lesion's images together) or images.
CI_UNITS = ("lesion", "image")
# Training's arithmetic: auto (bfloat16 autocast on CUDA, float32 on the CPU), fp32 everywhere, or bf16 autocast
# everywhere (on CPUs with AMX or AVX512-BF16 it trains whole networks about 2.5x faster; benchmarks/).
PRECISIONS = ("auto", "fp32", "bf16")
# Training: the metric-learning objective on the search feature, and how phase two keeps an epoch.
METRIC_LOSSES = ("none", "supcon", "proxy-anchor")
HEAD_SELECT = ("balanced_accuracy", "retrieval")
# How the members of an ensemble differ: bagging, left-out folds, seeds only, or snapshots of one run.
DIVERSITY = ("bootstrap", "fold", "seed", "snapshot")
# What the classifier learns: melanoma vs rest (sigmoid) or the diagnosis (softmax).
TARGETS = ("melanoma", "diagnosis")
# x7: the paper's offline expansion (7 variants and the original); online: random per batch; none.
AUGMENTS = ("x7", "online", "none")
# Segmenter architectures (models/segmentation.py BLOCKS): U-Net, RU-Net, R2U-Net.
SEG_ARCHS = ("unet", "runet", "r2unet")
DEVICE_HELP = "where the networks run: auto (CUDA when present, else CPU), cpu, cuda or cuda:N"

# the web app (dermsearch serve / token)
AUTH_MODES = ("on", "off")          # on: a token or a sign-in session for every data path
ROLES = ("rater", "admin")          # admin: also exports ratings and keys
