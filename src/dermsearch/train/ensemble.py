"""The ensemble and phase two of its training: the trained (or reused) members assembled into one
network, frozen, and GAP -> BatchNorm -> concatenation -> Dense(SELU) -> head trained on their
pooled vectors (computed once and cached in ``members/pooled-{key}.safetensors``), one resumable
:func:`~.harness.fit` loop (:func:`~.head.fit_head`, its files ``members/head-*``)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ..errors import ConfigError
from ..models.ensemble import EnsembleFeatureNet, EnsembleSpec, build_ensemble, save_ensemble
from ..models.weights import state_fingerprint
from .config import ClassifierTrainConfig
from .harness import RunFiles, atomic_json, atomic_safetensors, machine
from .head import HeadData, HeadTask, fit_head, pooled_encoder
from .inputs import RunContext, fingerprint
from .members import load_member_into, member_file

__all__ = ["pooled_cache_key", "source_members", "assemble", "train_phase_two"]


def pooled_cache_key(cfg: ClassifierTrainConfig, member_states: list[str], variants: int) -> str:
    """The key of phase two's cached pooled vectors: what they are computed from (the trained members'
    states, the images that are ``train`` and ``val`` and how each is presented), nothing that only
    phase two uses, so that phase-two variants share them."""
    return fingerprint(member_states, variants, cfg.limit, cfg.labels, cfg.split, cfg.train_split, cfg.val_split,
                       cfg.colour, cfg.tta, cfg.image_size, cfg.normalization)


def source_members(cfg: ClassifierTrainConfig, classes: tuple[str, ...]) -> EnsembleFeatureNet:
    """The ensemble whose members ``cfg.init_members`` reuses, checked against ``cfg``."""
    from ..models.ensemble import default_ensemble_path, load_ensemble

    path = default_ensemble_path() if cfg.init_members == "default" else Path(cfg.init_members)
    net, spec = load_ensemble(path)
    net.spec = spec
    want = {"backbone": cfg.backbone, "members": cfg.members, "shared_stages": cfg.shared_stages,
            "image_size": cfg.image_size, "target": cfg.target, "classes": tuple(classes),
            "normalization": cfg.normalization, "member_heads": True,
            "colour": cfg.colour}
    got = {**{k: getattr(spec, k) for k in want if k != "colour"}, "colour": (spec.train or {}).get("colour", "none")}
    got["classes"] = tuple(got["classes"])
    diff = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    if diff:
        raise ConfigError(f"{path}: its members cannot be reused for this config; differing settings "
                          + ", ".join(f"{k}: file {a!r} vs config {b!r}" for k, (a, b) in diff.items()))
    return net


def assemble(ctx: RunContext, source: EnsembleFeatureNet | None) -> tuple[EnsembleFeatureNet, EnsembleSpec]:
    """The ensemble to train phase two in: phase one's members (from their checkpoints, with the frozen
    prefix's weights as shared stages) or ``source``'s, and a new head."""
    cfg, data = ctx.cfg, ctx.data
    k = cfg.shared_stages
    spec = EnsembleSpec(backbone=cfg.backbone, members=cfg.members, shared_stages=k, feature_dim=cfg.feature_dim,
                        head_outputs=data.outputs, member_heads=True, target=cfg.target, classes=data.classes,
                        melanoma_class=cfg.melanoma_class, image_size=cfg.image_size,
                        normalization=cfg.normalization,
                        train={**cfg.to_dict(), **({"members_trained_with": source.spec.train}
                                                   if source is not None else {})})
    net = build_ensemble(spec).to(ctx.device)
    if source is not None:
        net.members.load_state_dict(source.members.state_dict())
        net.member_heads.load_state_dict(source.member_heads.state_dict())
        ctx.log(f"phase one: skipped, the {cfg.members} members of {cfg.init_members} are reused")
        return net, spec
    for m in range(cfg.members):
        load_member_into(net, m, load_file(str(member_file(cfg, ctx.out, m))))
    if k:
        # the shared prefix is the frozen one (ImageNet's, or member 0's initialisation)
        base = ctx.inputs.prefix.base
        shared = {n: p for n, p in base.state_dict().items() if n.startswith("stem.") or
                  any(n.startswith(f"stages.{i}.") for i in range(k))}
        net.members[0].load_state_dict(shared, strict=False)
    return net, spec


@torch.inference_mode()
def _pooled_of(net: EnsembleFeatureNet, inputs: Iterable[torch.Tensor]) -> torch.Tensor:
    """The members' pooled vectors [N, M, P] of network inputs (stage-k outputs with shared stages)."""
    rows = []
    for h in inputs:
        k = net.shared_stages
        outs = [mb.forward_suffix(h, k, []) for mb in net.members] if k else [mb(h) for mb in net.members]
        rows.append(torch.stack([o.pooled for o in outs], 1).cpu())
    return torch.cat(rows)


def pooled_vectors(ctx: RunContext, net: EnsembleFeatureNet) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The frozen members' pooled vectors of the training rows and the val images, from the cache or
    computed (and cached, as fp16: a rerun computes exactly the same), and the cache's key."""
    cfg, data, inputs = ctx.cfg, ctx.data, ctx.inputs
    key = pooled_cache_key(cfg, [state_fingerprint(m) for m in net.members], inputs.head_variants())
    cache_file = ctx.out / "members" / f"pooled-{key}.safetensors"
    if cache_file.is_file():
        cached = load_file(str(cache_file))
        return cached["train"].float(), cached["val"].float(), key
    if cfg.tta > 1 or inputs.pool is None:    # whole images through the members (test-time views need them)
        encode = pooled_encoder(net, cfg.normalization, cfg.tta, cfg.image_size, ctx.device, ctx.out / "members",
                                ctx.log)
        x_tr, x_val = encode(data.train.images, ctx.log), encode(data.val.images, ctx.log)
    else:
        x_tr = _pooled_of(net, inputs.train_batches())                    # [N·variants or N, M, P]
        x_val = _pooled_of(net, inputs.val_batches())
    x_tr, x_val = x_tr.half().contiguous(), x_val.half().contiguous()
    atomic_safetensors(cache_file, {"train": x_tr, "val": x_val})
    return x_tr.float(), x_val.float(), key


def train_phase_two(ctx: RunContext, net: EnsembleFeatureNet, spec: EnsembleSpec, phase_one: list[dict]) -> dict:
    """Phase two on the frozen members of ``net``; writes the ensemble and the whole run's history
    (``phase_one``: the members' harness states) and returns the metrics."""
    cfg, data, out, log = ctx.cfg, ctx.data, ctx.out, ctx.log
    net.eval()
    for p in net.members.parameters():
        p.requires_grad_(False)
    t0 = time.perf_counter()
    x_tr, x_val, source = pooled_vectors(ctx, net)
    variants = ctx.inputs.head_variants()
    log(f"phase two: pooled vectors of {len(x_tr)} training rows and {len(x_val)} val images "
        f"({time.perf_counter() - t0:.0f} s)")
    with torch.inference_mode():     # per-member validation figures (their own phase-one heads)
        member_metrics = [data.val_metrics(net.member_heads[m](x_val[:, m].to(ctx.device)).cpu())
                          for m in range(cfg.members)]
    head_data = HeadData(x_tr, data.y_train.repeat_interleave(variants), x_val, data.y_val, data.val.melanoma,
                         np.asarray(data.train.labels, dtype=object), np.asarray(data.val.labels, dtype=object),
                         data.train.melanoma, np.arange(0, len(x_tr), variants))
    task = HeadTask(head_data, data.val_metrics, data.score, data.class_weights, source)
    best_metrics, history = fit_head(net, cfg, task, RunFiles(out / "members", "head-"), log)
    metrics = {"val": {"ensemble": best_metrics, "members": member_metrics},
               "machine": machine(ctx.device, ctx.precision)}
    save_ensemble(net.cpu(), EnsembleSpec(**{**asdict(spec), "metrics": metrics}), out / "ensemble.safetensors")
    atomic_json(out / "history.json", [rec for st in phase_one for rec in st["history"]] + history)
    log(f"ensemble: val melanoma AUC {best_metrics['auc']:.4f} (members "
        + ", ".join(f"{mm['auc']:.4f}" for mm in member_metrics) + f") -> {out / 'ensemble.safetensors'}")
    return metrics
