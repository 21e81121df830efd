"""``dermsearch train classifier``: the paper's two-phase training of the EfficientNet ensemble.

Phase one (:mod:`.members`) trains each member alone (its backbone and its own head) with focal
loss. Phase two (:mod:`.ensemble`) freezes the members and trains GAP -> BatchNorm -> concatenation
-> Dense(1024, SELU) -> head. Both run through the resumable loop of :mod:`.harness`; every random
stream is derived from the run's seed in :mod:`.seeds`.

Targets: ``melanoma`` (the paper's: one sigmoid unit, binary focal loss) or ``diagnosis`` (softmax
over the label column's classes, multi-class focal loss, optional class weights).

Frozen shared stages (``trainable_stages`` < 7): the first ``7 − trainable_stages`` stages keep
their ImageNet weights and are shared by every member, so their outputs are computed once per
training image (and, with the offline x7 expansion, per variant) and cached. That is what makes
training feasible on a CPU; ``trainable_stages=7`` trains whole members as the paper did.

Member diversity: ``bootstrap`` (default; each member sees its own bootstrap sample of the
training images and its own seed: bagging), ``fold`` (member i leaves out the i-th of M folds),
``seed`` (all images, different seeds only) or ``snapshot`` (a snapshot ensemble: member 0 trains
for ``epochs``, each later member starts from the previous one's last weights and trains
``snapshot_epochs`` (default 1) more with its own one-cycle schedule, a warm restart; all images;
the ensemble keeps each snapshot's last epoch).

Outputs in ``out_dir``: ``ensemble.safetensors`` (fp16, with its spec and metrics as metadata),
``config.json`` (the resolved config), ``history.json``, ``metrics.json``; ``members/`` and
``cache/`` hold the resumable state of an interrupted run (``members/m{i}-*``: phase one,
``members/pooled-*``, ``members/head-*``: phase two).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ..models.device import runtime_device
from ..runtime import Runtime
from . import seeds
from .config import TARGETS, ClassifierTrainConfig
from .ensemble import assemble, source_members, train_phase_two
from .harness import atomic_json
from .inputs import MemberInputs, RunContext
from .members import new_backbone, train_member
from .prefix import FrozenPrefix
from .targets import TrainData

__all__ = ["ClassifierTrainConfig", "train_classifier", "TARGETS"]


def train_classifier(cfg: ClassifierTrainConfig, out_dir: str | Path, log: Callable[[str], None] = print,
                     progress: bool = True, cache_dir: str | Path | None = None,
                     runtime: Runtime | None = None) -> dict:
    """Train the ensemble; returns the validation metrics. Resumes where an interrupted run stopped,
    whatever ``runtime`` (device, threads; default ``Runtime()``) either ran on.

    ``cache_dir`` (default ``out_dir/cache``) holds the frozen-prefix outputs; runs that differ only
    in target or later settings can share it."""
    cfg.require_labels()
    out = Path(out_dir)
    (out / "members").mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir else out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    runtime = runtime or Runtime()
    device = runtime_device(runtime)
    atomic_json(out / "config.json", cfg.to_dict())
    t_start = time.perf_counter()
    data = TrainData.load(cfg, device, log)

    seeds.seed_torch(cfg.seed)           # the frozen prefix: ImageNet's, or (random weights) member 0's initialisation
    base = new_backbone(cfg, device).eval()
    source = source_members(cfg, data.classes) if cfg.init_members else None
    if source is not None:       # the frozen prefix is the source ensemble's own
        base.load_state_dict(source.members[0].state_dict(), strict=False)
    inputs = MemberInputs.prepare(FrozenPrefix(base, cfg.shared_stages, cfg, device), data, cache,
                                  source is not None, log, progress)
    ctx = RunContext(out, runtime.precision, inputs, log, progress)

    phase_one = [] if source is not None else [train_member(ctx, m) for m in range(cfg.members)]
    net, spec = assemble(ctx, source)
    metrics = train_phase_two(ctx, net, spec, phase_one)
    metrics["seconds"] = time.perf_counter() - t_start
    atomic_json(out / "metrics.json", metrics)
    return metrics
