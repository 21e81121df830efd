"""The classifier ensemble: focal losses, the shared-prefix ensemble, two-phase training, targets, CLI."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dermsearch.cli.main import main
from dermsearch.errors import ConfigError
from dermsearch.evaluate import EvaluationConfig, Evaluator
from dermsearch.evaluate.classifier import evaluate_classifier
from dermsearch.extract import Extractor, ExtractorConfig
from dermsearch.index.build import build_index
from dermsearch.models import create_backbone
from dermsearch.models.ensemble import EnsembleFeatureNet, default_ensemble_path, load_ensemble, read_ensemble_spec
from dermsearch.runtime import Runtime
from dermsearch.search import Searcher
from dermsearch.train.classifier import ClassifierTrainConfig, train_classifier
from dermsearch.train.ensemble import pooled_cache_key
from dermsearch.train.harness import load_metadata
from dermsearch.train.head import epoch_sample
from dermsearch.train.losses import binary_focal_loss, multiclass_focal_loss
from dermsearch.train.members import Member
from dermsearch.train.members import member_file as _member_file
from dermsearch.train.members import member_key as _member_key

from .conftest import REPO, SHARED, TORCH, lesion_image, require_data

HAM = SHARED / "ham10000"


# ------------------------------------------------------------------ losses

def test_binary_focal_loss_hand_values():
    # logit 0 -> p = 0.5: positive 0.25·0.5²·ln 2, negative 0.75·0.5²·ln 2 (alpha 0.25, gamma 2)
    assert float(binary_focal_loss(torch.tensor([0.0]), torch.tensor([1.0]))) == pytest.approx(
        0.25 * 0.25 * math.log(2), rel=1e-6)
    assert float(binary_focal_loss(torch.tensor([0.0]), torch.tensor([0.0]))) == pytest.approx(
        0.75 * 0.25 * math.log(2), rel=1e-6)
    # logit ln 3 -> p = 0.75; positive with alpha 0.75, gamma 1: 0.75·0.25·(−ln 0.75)
    v = binary_focal_loss(torch.tensor([math.log(3)]), torch.tensor([1.0]), alpha=0.75, gamma=1.0)
    assert float(v) == pytest.approx(0.75 * 0.25 * -math.log(0.75), rel=1e-6)
    # gamma 0, no alpha: plain binary cross-entropy
    x, y = torch.randn(32), (torch.rand(32) > 0.5).float()
    assert float(binary_focal_loss(x, y, alpha=None, gamma=0.0)) == pytest.approx(
        float(torch.nn.functional.binary_cross_entropy_with_logits(x, y)), rel=1e-5)


def test_multiclass_focal_loss_hand_values_and_loop_reference():
    logits = torch.tensor([[0.0, math.log(3)]])  # softmax (0.25, 0.75)
    assert float(multiclass_focal_loss(logits, torch.tensor([1]))) == pytest.approx(
        -(0.25**2) * math.log(0.75), rel=1e-6)
    assert float(multiclass_focal_loss(logits, torch.tensor([0]), class_weights=torch.tensor([2.0, 1.0]))) \
        == pytest.approx(-2 * 0.75**2 * math.log(0.25), rel=1e-6)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 5, generator=g)
    y = torch.randint(0, 5, (20,), generator=g)
    w = torch.rand(5, generator=g) + 0.5
    ref = 0.0
    for i in range(20):   # the naive loop
        p = math.exp(float(x[i, y[i]])) / sum(math.exp(float(v)) for v in x[i])
        ref += -float(w[y[i]]) * (1 - p) ** 1.5 * math.log(p)
    assert float(multiclass_focal_loss(x, y, gamma=1.5, class_weights=w)) == pytest.approx(ref / 20, rel=1e-5)
    # gamma 0: cross-entropy
    assert float(multiclass_focal_loss(x, y, gamma=0.0)) == pytest.approx(
        float(torch.nn.functional.cross_entropy(x, y)), rel=1e-5)


# ------------------------------------------------------------------ the ensemble with a shared prefix

def test_shared_prefix_ensemble_equals_independent_members():
    torch.manual_seed(0)
    members = [create_backbone("efficientnet-lite0") for _ in range(3)]
    for m in members[1:]:   # same early stages, different late ones
        for k in ["stem", *[f"stages.{i}" for i in range(5)]]:
            m.get_submodule(k).load_state_dict(members[0].get_submodule(k).state_dict())
    full = EnsembleFeatureNet([_clone(m) for m in members], 64, head_outputs=2).eval()
    shared = EnsembleFeatureNet([_clone(m) for m in members], 64, head_outputs=2, shared_stages=5).eval()
    shared.dense.load_state_dict(full.dense.state_dict())
    shared.head.load_state_dict(full.head.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = full(x), shared(x)
    torch.testing.assert_close(a.feature, b.feature)
    for ta, tb in zip(a.member_taps, b.member_taps):
        assert len(ta) == len(tb) == 7
        for u, v in zip(ta, tb):
            torch.testing.assert_close(u, v)
    # the later members hold no copy of the shared stages
    assert not any(k.startswith(("members.1.stem", "members.1.stages.0")) for k in shared.state_dict())
    assert sum(p.numel() for p in shared.parameters()) < sum(p.numel() for p in full.parameters())


def _clone(m):
    c = create_backbone(m.name)
    c.load_state_dict(m.state_dict())
    c.classifier = None
    return c


# ------------------------------------------------------------------ training

def _synthetic_set(root: Path, n_train: int = 24, n_val: int = 12) -> Path:
    """Melanomas are large dark lesions, the rest small light ones: a learnable signal."""
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n_train + n_val):
        mel = i % 3 == 0
        img = lesion_image(i, 48)
        arr = np.asarray(img).astype(np.float32)
        arr = arr * (0.45 if mel else 1.1)
        from PIL import Image
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(root / "images" / f"s{i}.png")
        diag = "mel" if mel else ("nv" if i % 3 == 1 else "bkl")
        rows.append({"image_id": f"s{i}", "lesion_id": f"L{i}", "image_path": f"images/s{i}.png", "diagnosis": diag,
                     "melanoma": int(mel), "split": "train" if i < n_train else "val"})
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root / "labels.csv"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return _synthetic_set(tmp_path_factory.mktemp("clf"))


TINY_TRAIN = dict(members=2, image_size=32, epochs=4, head_epochs=3, batch_size=8, lr=3e-3, feature_dim=32, tta=1)


@pytest.mark.slow
def test_tiny_two_phase_training_melanoma(synthetic, tmp_path):
    cfg = ClassifierTrainConfig(labels=str(synthetic), target="melanoma", **TINY_TRAIN)
    logs: list[str] = []
    metrics = train_classifier(cfg, tmp_path / "run", log=logs.append, progress=False)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    for m in (1, 2):
        losses = [r["train_loss"] for r in history if r.get("member") == m]
        assert len(losses) == 4 and losses[-1] < losses[0], losses
    assert {"ensemble", "members"} <= set(metrics["val"]) and len(metrics["val"]["members"]) == 2
    # the config is written beside the weights; the weights load without pickle and describe themselves
    assert json.loads((tmp_path / "run" / "config.json").read_text())["members"] == 2
    net, spec = load_ensemble(tmp_path / "run" / "ensemble.safetensors")
    assert (spec.target, spec.classes, spec.head_outputs, spec.members) == ("melanoma", ("melanoma",), 1, 2)
    assert spec.shared_stages == 5 and spec.train["epochs"] == 4
    assert all(v.dtype == torch.float16 for k, v in load_file(str(tmp_path / "run" / "ensemble.safetensors")).items()
               if v.is_floating_point())
    # members differ (bootstrap samples and seeds)
    s = net.state_dict()
    assert not torch.equal(s["members.0.head.conv.weight"], s["members.1.head.conv.weight"])
    # the extractor uses it: the 1024-d (here 32-d) Dense feature, Grams averaged over the members
    ex = Extractor(ExtractorConfig.for_weights(str(tmp_path / "run" / "ensemble.safetensors"), masks=False), TORCH)
    assert ex.feature_dim == 32 and ex.has_head
    out = ex.extract([lesion_image(0, 48), lesion_image(1, 48)])
    assert out.features.shape == (2, 32) and np.isfinite(out.styles).all()
    # evaluation of the head and each member on the val split
    result = evaluate_classifier(tmp_path / "run" / "ensemble.safetensors", synthetic, on="val", log=logs.append)
    assert result["images"] == 12 and len(result["auc_members"]) == 2 and 0 <= result["auc_ensemble"] <= 1

    # rerunning the same command resumes: finished members are not retrained, nor is phase two, and the
    # ensemble written again is the same
    before = load_file(str(tmp_path / "run" / "members" / "m1-best.safetensors"))
    ensemble = load_file(str(tmp_path / "run" / "ensemble.safetensors"))
    logs.clear()
    again = train_classifier(cfg, tmp_path / "run", log=logs.append, progress=False)
    assert sum(line.startswith("member ") and "done earlier" in line for line in logs) == 2
    assert any(line.startswith("phase two: done earlier") for line in logs)
    assert not any(line.startswith("head epoch") for line in logs)
    after = load_file(str(tmp_path / "run" / "members" / "m1-best.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    rewritten = load_file(str(tmp_path / "run" / "ensemble.safetensors"))
    assert ensemble.keys() == rewritten.keys() and all(torch.equal(ensemble[k], rewritten[k]) for k in ensemble)
    assert again["val"] == metrics["val"]


@pytest.mark.slow
@pytest.mark.parametrize("decay", [1.0, 0.5])   # one learning rate, or one per stage (several param groups)
def test_interrupted_member_resumes_from_its_last_epoch(synthetic, tmp_path, decay):
    cfg = ClassifierTrainConfig(labels=str(synthetic), target="melanoma", stage_lr_decay=decay,
                                **{**TINY_TRAIN, "members": 1})

    def killer(line: str) -> None:   # the run is interrupted right after its second epoch is saved
        if "epoch 2/4" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_classifier(cfg, tmp_path / "run", log=killer, progress=False)
    assert not (tmp_path / "run" / "ensemble.safetensors").exists()
    logs: list[str] = []
    # another device and another precision for the second sitting (neither is part of the resume key)
    train_classifier(cfg, tmp_path / "run", log=logs.append, progress=False,
                     runtime=Runtime(device="cpu", precision="bf16"))
    assert not any("afresh" in line for line in logs)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["machine"]["precision"] == "bf16"
    history = json.loads((tmp_path / "run" / "history.json").read_text())   # each epoch says what it ran in
    assert [rec["precision"] for rec in history if "member" in rec] == ["fp32", "fp32", "bf16", "bf16"]
    assert any("resuming after epoch 2" in line for line in logs)
    assert sum("member 1/1 epoch" in line for line in logs) == 2   # epochs 3 and 4 only
    assert (tmp_path / "run" / "ensemble.safetensors").is_file()
    # the schedule gave each trained stage its own peak rate (stage 7 + head, then stage 6), also after the resume
    groups = json.loads((tmp_path / "run" / "members" / "m0-state.json").read_text())["optimizer"]["param_groups"]
    assert [g["max_lr"] for g in groups] == pytest.approx([cfg.lr * decay ** d for d in range(1 if decay == 1 else 2)])


@pytest.mark.slow
def test_phase_two_resumes_after_its_last_saved_epoch_as_if_not_stopped(synthetic, tmp_path):
    cfg = ClassifierTrainConfig(labels=str(synthetic), target="melanoma", ema=0.5,
                                **{**TINY_TRAIN, "members": 1, "epochs": 1, "head_epochs": 3})
    cpu = Runtime(device="cpu")        # bit for bit is a CPU's promise
    whole = train_classifier(cfg, tmp_path / "whole", log=lambda m: None, progress=False, runtime=cpu)

    def killer(line: str) -> None:   # interrupted right after phase two's second epoch is saved
        if line.startswith("head epoch 2/3"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_classifier(cfg, tmp_path / "cut", log=killer, progress=False, runtime=cpu)
    assert load_metadata(tmp_path / "cut" / "members" / "head-last.safetensors")["epoch"] == "1"
    logs: list[str] = []
    cut = train_classifier(cfg, tmp_path / "cut", log=logs.append, progress=False, runtime=cpu)
    assert any(line.startswith("phase two: resuming after epoch 2") for line in logs)
    assert sum(line.startswith("head epoch") for line in logs) == 1
    a, b = (load_file(str(tmp_path / run / "ensemble.safetensors")) for run in ("whole", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert cut["val"] == whole["val"]
    history = [r for r in json.loads((tmp_path / "cut" / "history.json").read_text()) if r.get("phase") == 2]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    # another phase-two setting: phase two starts afresh, the members are kept
    logs.clear()
    train_classifier(replace(cfg, head_lr=cfg.head_lr / 2), tmp_path / "cut", log=logs.append, progress=False,
                     runtime=cpu)
    assert any(line.startswith("member 1/1: done earlier") for line in logs)
    assert any(line.startswith("phase two: a run with another config stopped here") for line in logs)
    assert sum(line.startswith("head epoch") for line in logs) == 3


def test_weight_average_matches_a_naive_loop_and_round_trips():
    from dermsearch.train.harness import WeightAverage

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    avg = WeightAverage([model], 0.9, warmup=True)
    ref = {n: t.clone().double() for n, t in model.state_dict().items()}
    for t in range(1, 8):
        model.train()
        loss = model(torch.randn(16, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        avg.update()
        d = min(0.9, (1 + t) / (10 + t))          # the warm-up: 0.18, 0.25, ..., 0.9 from the 80th update
        for n, v in model.state_dict().items():
            ref[n] = ref[n] * d + v.double() * (1 - d) if v.is_floating_point() else v.clone().double()
    assert avg.updates == 7 and avg.current_decay() == pytest.approx(9 / 18)
    live = {n: t.clone() for n, t in model.state_dict().items()}
    avg.swap()
    for n, v in model.state_dict().items():
        torch.testing.assert_close(v.double(), ref[n], rtol=1e-6, atol=1e-6)
    assert model.state_dict()["1.num_batches_tracked"] == 7      # integer buffers are copied, not averaged
    saved = avg.tensors()          # while swapped, the shadow holds the live weights
    avg.swap()
    assert all(torch.equal(model.state_dict()[n], live[n]) for n in live)
    other = WeightAverage([model], 0.9, warmup=True)
    other.load(avg.tensors(), avg.updates)
    assert other.updates == 7 and all(torch.equal(a, b) for a, b in zip(other.tensors().values(),
                                                                          avg.tensors().values()))
    assert not all(torch.equal(a, b) for a, b in zip(saved.values(), avg.tensors().values()))
    with pytest.raises(ValueError, match="other tensors"):
        other.load({"0.0.weight": live["0.weight"]}, 1)
    other.updates = 78
    assert other.current_decay() < 0.9
    other.updates = 79
    assert other.current_decay() == pytest.approx(0.9)
    assert WeightAverage([model], 0.5).current_decay() == 0.5     # no warm-up: the decay from the first step


@pytest.mark.slow
def test_member_weight_average_is_validated_kept_and_resumed(synthetic, tmp_path):
    cfg = ClassifierTrainConfig(labels=str(synthetic), target="melanoma", member_ema=0.9,
                                **{**TINY_TRAIN, "members": 1, "epochs": 3, "head_epochs": 1})
    cpu = Runtime(device="cpu")        # bit for bit is a CPU's promise (a GPU's bf16 kernels need not repeat)
    train_classifier(cfg, tmp_path / "whole", log=lambda m: None, progress=False, runtime=cpu)

    def killer(line: str) -> None:   # interrupted right after its second epoch is saved
        if "epoch 2/3" in line:
            raise KeyboardInterrupt

    for run in ("cut", "lost"):
        with pytest.raises(KeyboardInterrupt):
            train_classifier(cfg, tmp_path / run, log=killer, progress=False, runtime=cpu)
    logs: list[str] = []
    train_classifier(cfg, tmp_path / "cut", log=logs.append, progress=False, runtime=cpu)
    assert any("resuming after epoch 2" in line for line in logs) and not any("afresh" in line for line in logs)
    assert any("member 1/1 epoch 3/3" in line and "weight average" in line for line in logs)
    whole, cut = tmp_path / "whole" / "members", tmp_path / "cut" / "members"
    for name in ("m0-last", "m0-average", "m0-best"):   # the resumed run is the uninterrupted one, average included
        a, b = load_file(str(whole / f"{name}.safetensors")), load_file(str(cut / f"{name}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert load_metadata(cut / "m0-average.safetensors")["epoch"] == "2"
    # what is validated and kept is the average, not the live weights
    history = json.loads((tmp_path / "whole" / "history.json").read_text())
    best_epoch = max((r for r in history if r.get("member") == 1), key=lambda r: r["val_auc"])["epoch"]
    best, last = load_file(str(whole / "m0-best.safetensors")), load_file(str(whole / "m0-last.safetensors"))
    assert not torch.equal(best["head.weight"], last["head.weight"])
    if best_epoch == 3:
        average = load_file(str(whole / "m0-average.safetensors"))
        assert torch.equal(best["head.weight"], average["0.head.weight"])
    # an unfinished member whose average is lost starts afresh rather than resume without it ...
    (tmp_path / "lost" / "members" / "m0-average.safetensors").unlink()
    logs.clear()
    train_classifier(cfg, tmp_path / "lost", log=logs.append, progress=False, runtime=cpu)
    assert any("unfinished epoch stopped here; starting afresh" in line for line in logs)
    # ... a finished one no longer needs it
    (cut / "m0-average.safetensors").unlink()
    logs.clear()
    train_classifier(cfg, tmp_path / "cut", log=logs.append, progress=False, runtime=cpu)
    assert any("done earlier" in line for line in logs) and not any("afresh" in line for line in logs)
    # a decay the warm-up cannot reach in the member's steps is named (tiny data: 3 epochs of 3 batches of 8)
    logs.clear()
    train_classifier(replace(cfg, member_ema=0.99), tmp_path / "far", log=logs.append, progress=False, runtime=cpu)
    assert any("member_ema 0.99 is not reached in 9 steps; the warm-up ends at 0.526" in line   # (1 + 9) / (10 + 9)
               for line in logs)
    # off (0) keeps the key of runs from before the setting; snapshots cannot average
    base = ClassifierTrainConfig(labels="x")
    assert "member_ema" not in _member_key(base, 0) and _member_key(replace(base, member_ema=0.99), 0)["member_ema"]
    with pytest.raises(ConfigError, match="member_ema"):
        ClassifierTrainConfig(labels="x", member_ema=1.0)
    with pytest.raises(ConfigError, match="snapshot"):
        ClassifierTrainConfig(labels="x", member_ema=0.99, diversity="snapshot")


@pytest.mark.slow
def test_snapshot_ensemble_members_continue_from_the_previous_member(synthetic, tmp_path):
    # a learning rate of ~0: each snapshot is (almost exactly) the weights it started from, so
    # member 2 must equal member 1's last weights, heads included (a fresh member would have its own
    # seed's head)
    cfg = ClassifierTrainConfig(labels=str(synthetic), target="melanoma", diversity="snapshot",
                                **{**TINY_TRAIN, "members": 3, "epochs": 2, "lr": 1e-12})
    assert cfg.snapshot_epochs == 1 and [cfg.member_epochs(m) for m in range(3)] == [2, 1, 1]
    logs: list[str] = []
    train_classifier(cfg, tmp_path / "run", log=logs.append, progress=False)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [sum(r.get("member") == m for r in history) for m in (1, 2, 3)] == [2, 1, 1]
    assert any("member 2/3 epoch 1/1" in line for line in logs)
    members = tmp_path / "run" / "members"
    last = [load_file(str(members / f"m{m}-last.safetensors")) for m in range(3)]
    for m in (1, 2):
        for name in ("head.weight", "head.bias", "backbone.head.conv.weight"):
            torch.testing.assert_close(last[m][name], last[m - 1][name], rtol=0, atol=1e-6)
    # the same settings without snapshots: member 2 starts from its own initialisation
    fresh = ClassifierTrainConfig(labels=str(synthetic), target="melanoma", diversity="seed",
                                  **{**TINY_TRAIN, "members": 2, "epochs": 1, "lr": 1e-12})
    train_classifier(fresh, tmp_path / "seed", log=lambda m: None, progress=False)
    a, b = (load_file(str(tmp_path / "seed" / "members" / f"m{m}-last.safetensors")) for m in (0, 1))
    assert not torch.allclose(a["head.weight"], b["head.weight"], atol=1e-3)
    # rerunning resumes every snapshot
    logs.clear()
    train_classifier(cfg, tmp_path / "run", log=logs.append, progress=False)
    assert sum(line.startswith("member ") and "done earlier" in line for line in logs) == 3
    # a snapshot whose starting point changed is retrained, and so is every snapshot after it
    f = members / "m0-last.safetensors"
    meta = load_metadata(f)
    changed = {**last[0], "head.bias": last[0]["head.bias"] + 0.1}
    save_file(changed, str(f), meta)
    logs.clear()
    train_classifier(cfg, tmp_path / "run", log=logs.append, progress=False)
    assert sum(line.startswith("member ") and "done earlier" in line for line in logs) == 1
    assert sum(line.startswith("member ") and "afresh" in line for line in logs) == 2
    torch.testing.assert_close(load_file(str(members / "m2-last.safetensors"))["head.bias"],
                               changed["head.bias"], rtol=0, atol=1e-6)
    # a longer cycle for the later members restarts them only
    logs.clear()
    train_classifier(replace(cfg, snapshot_epochs=2), tmp_path / "run", log=logs.append, progress=False)
    assert sum(line.startswith("member ") and "done earlier" in line for line in logs) == 1
    assert sum(line.startswith("member ") and "afresh" in line for line in logs) == 2
    assert any("member 3/3 epoch 2/2" in line for line in logs)


# a member's state.json as main 0a4206d wrote it (TINY_TRAIN, 1 member, melanoma; stopped after epoch 2 of 4)
STATE_0A4206D = Path(__file__).parent / "data" / "member_state_0a4206d.json"


def test_resume_key_of_a_run_started_before_the_split_of_the_trainer():
    """The member key is what runs started on main 0a4206d saved: they resume, not restart."""
    saved = json.loads(STATE_0A4206D.read_text())
    cfg = ClassifierTrainConfig(labels=saved["key"]["labels"], target="melanoma", **{**TINY_TRAIN, "members": 1})
    assert _member_key(cfg, 0) == saved["key"]
    assert set(saved) == {"key", "epoch", "best", "history", "optimizer", "scheduler", "rng", "cuda_rng"}


@pytest.mark.slow
def test_a_member_checkpoint_in_the_format_of_0a4206d_resumes(synthetic, tmp_path):
    """A run interrupted on main 0a4206d (its state.json, with the weights and optimiser tensors of
    the same epoch) resumes after its last saved epoch and finishes."""
    cfg = ClassifierTrainConfig(labels=str(synthetic), target="melanoma", **{**TINY_TRAIN, "members": 1})

    def killer(line: str) -> None:   # the weights and optimiser files of epoch 2
        if "epoch 2/4" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_classifier(cfg, tmp_path / "run", log=killer, progress=False)
    members = tmp_path / "run" / "members"
    ours = json.loads((members / "m0-state.json").read_text())
    saved = json.loads(STATE_0A4206D.read_text())
    saved["key"]["labels"] = str(synthetic)          # the same run, in this test's folder
    assert ours["key"] == saved["key"] and set(ours) == set(saved) and ours["epoch"] == saved["epoch"] == 1
    assert sorted(p.name for p in members.iterdir()) == ["m0-best.safetensors", "m0-last.safetensors",
                                                        "m0-optimizer.safetensors", "m0-state.json"]
    (members / "m0-state.json").write_text(json.dumps(saved))
    logs: list[str] = []
    train_classifier(cfg, tmp_path / "run", log=logs.append, progress=False)
    assert any("member 1/1: resuming after epoch 2" in line for line in logs)
    assert not any("afresh" in line for line in logs)
    assert sum("member 1/1 epoch" in line for line in logs) == 2   # epochs 3 and 4 only
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [r["epoch"] for r in history if r.get("member") == 1] == [1, 2, 3, 4]
    assert history[:2] == [{**r, "member": 1} for r in saved["history"]]   # its first two epochs are the saved ones
    assert (tmp_path / "run" / "ensemble.safetensors").is_file()


def test_snapshot_settings_keys_and_files(tmp_path):
    base = ClassifierTrainConfig(labels="x")
    snap = replace(base, diversity="snapshot", snapshot_epochs=2)
    assert [snap.member_epochs(m) for m in range(5)] == [3, 2, 2, 2, 2]
    assert [base.member_epochs(m) for m in range(5)] == [3] * 5
    # other diversities, and a snapshot ensemble's first member, keep the key of runs made before
    # snapshot_epochs existed; later snapshots depend on it and on where they start
    assert "snapshot_epochs" not in _member_key(base, 3) and "snapshot_epochs" not in _member_key(snap, 0)
    assert _member_key(snap, 1, "abc")["snapshot_epochs"] == 2 and _member_key(snap, 1, "abc")["snapshot_of"] == "abc"
    assert _member_key(snap, 1, "abc") != _member_key(snap, 1, "abd")
    # the ensemble is built from each member's best epoch, or a snapshot's last
    assert _member_file(base, tmp_path, 2).name == "m2-best.safetensors"
    assert _member_file(snap, tmp_path, 2).name == "m2-last.safetensors"


def test_stage_lr_decay_gives_each_trained_stage_its_own_rate():

    for k in (5, 0):              # stages 6-7 trained, or whole members (the stem joins stage 1)
        member = Member(create_backbone("efficientnet-lite0"), k, 3, 0.2)
        groups = member.param_groups(1e-3, 0.5)
        assert [g["lr"] for g in groups] == pytest.approx([1e-3 * 0.5 ** d for d in range(7 - k)])
        ids = [id(p) for g in groups for p in g["params"]]
        assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in member.trainable()}
        first, last = ({id(p) for p in g["params"]} for g in (groups[0], groups[-1]))
        assert {id(p) for p in member.backbone.stages[6].parameters()} <= first
        assert {id(p) for p in member.backbone.stages[k].parameters()} <= last
    # one rate keeps the resume key of runs from before the setting; another rate is another run
    base = ClassifierTrainConfig(labels="x")
    assert "stage_lr_decay" not in _member_key(base, 0)
    assert _member_key(replace(base, stage_lr_decay=0.5), 0)["stage_lr_decay"] == 0.5
    with pytest.raises(ConfigError, match="stage_lr_decay"):
        ClassifierTrainConfig(labels="x", stage_lr_decay=0)
    with pytest.raises(ConfigError, match="stage_lr_decay"):
        ClassifierTrainConfig(labels="x", stage_lr_decay=1.5)


@pytest.mark.parametrize("name", ["supcon", "proxy-anchor"])
def test_member_metric_loss_on_the_pooled_vector_falls_with_a_few_steps(name):
    from dermsearch.train.losses import metric_loss_module

    torch.manual_seed(0)
    backbone = create_backbone("efficientnet-lite0")
    backbone.classifier = None
    k = 6                          # stage 7 trained on stage 6's outputs: a few cheap steps
    member = Member(backbone, k, 3, 0.2, metric_loss_module(name, 3, backbone.pooled_dim))
    member.set_train()
    with torch.no_grad():
        shape = backbone.forward_prefix(torch.zeros(1, 3, 64, 64), k)[0].shape[1:]
    g = torch.Generator().manual_seed(1)
    y = torch.arange(3).repeat(8)
    h = torch.randn(len(y), *shape, generator=g) + 2 * y.view(-1, 1, 1, 1) * torch.randn(1, *shape, generator=g)
    proxies = member.metric_parameters()
    assert len(proxies) == (1 if name == "proxy-anchor" else 0)
    assert {id(p) for p in proxies}.isdisjoint(id(p) for p in member.trainable())
    opt = torch.optim.AdamW([{"params": member.trainable()}, *([{"params": proxies, "lr": 0.1}] if proxies else [])],
                            lr=1e-3)

    def metric_loss() -> torch.Tensor:
        pooled, logits = member.forward_both(h)
        assert logits.shape == (len(y), 3)
        return member.metric(pooled, y)

    first = float(metric_loss().detach())
    for _ in range(8):
        loss = metric_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(metric_loss().detach()) < first
    # the proxies are saved with the member (its resume state), never with the ensemble's members
    assert any(key.startswith("metric.") for key in member.state_dict()) == (name == "proxy-anchor")


def test_member_metric_loss_settings_and_resume_key():
    base = ClassifierTrainConfig(labels="x")
    key = _member_key(base, 0)
    # off keeps the key of runs from before the setting: neither the weight nor the temperature enters it
    assert not {"member_metric_loss", "member_metric_weight", "metric_temperature"} & set(key)
    supcon = _member_key(replace(base, member_metric_loss="supcon", member_metric_weight=0.5), 0)
    assert supcon["member_metric_loss"] == "supcon" and supcon["member_metric_weight"] == 0.5
    assert supcon["metric_temperature"] == 0.1        # supcon's temperature now shapes the members too
    assert "metric_temperature" not in _member_key(replace(base, member_metric_loss="proxy-anchor"), 0)
    # phase two's loss does not touch the members
    assert _member_key(replace(base, metric_loss="proxy-anchor"), 0) == key
    for bad in ({"member_metric_loss": "triplet"}, {"member_metric_weight": 0}, {"metric_temperature": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            ClassifierTrainConfig(labels="x", **bad)


@pytest.mark.slow
def test_member_metric_loss_trains_and_resumes_with_its_proxies(synthetic, tmp_path):
    cfg = ClassifierTrainConfig(labels=str(synthetic), target="diagnosis", member_metric_loss="proxy-anchor",
                                **{**TINY_TRAIN, "members": 1, "epochs": 3, "head_epochs": 1})
    cpu = Runtime(device="cpu")
    train_classifier(cfg, tmp_path / "whole", log=lambda m: None, progress=False, runtime=cpu)

    def killer(line: str) -> None:
        if "epoch 2/3" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_classifier(cfg, tmp_path / "cut", log=killer, progress=False, runtime=cpu)
    logs: list[str] = []
    train_classifier(cfg, tmp_path / "cut", log=logs.append, progress=False, runtime=cpu)
    assert any("resuming after epoch 2" in line for line in logs) and not any("afresh" in line for line in logs)
    whole = load_file(str(tmp_path / "whole" / "members" / "m0-last.safetensors"))
    cut = load_file(str(tmp_path / "cut" / "members" / "m0-last.safetensors"))
    assert "metric.proxies" in whole and whole.keys() == cut.keys()
    assert all(torch.equal(whole[k], cut[k]) for k in whole)     # proxies and Adam state resumed with the member
    # the loss changes what is trained: without it the member ends elsewhere
    plain = replace(cfg, member_metric_loss="none")
    train_classifier(plain, tmp_path / "plain", log=lambda m: None, progress=False, runtime=cpu)
    other = load_file(str(tmp_path / "plain" / "members" / "m0-last.safetensors"))
    assert not torch.equal(other["head.weight"], whole["head.weight"])
    # the ensemble holds the network only
    ens = load_file(str(tmp_path / "whole" / "ensemble.safetensors"))
    assert not any("proxies" in k for k in ens)


@pytest.mark.slow
def test_tiny_training_diagnosis_target_and_evaluator_head_auc(synthetic, tmp_path):
    cfg = ClassifierTrainConfig(labels=str(synthetic), target="diagnosis", class_weights=True, balanced=True,
                                augment="online", diversity="fold", **TINY_TRAIN)
    metrics = train_classifier(cfg, tmp_path / "run", log=lambda m: None, progress=False)
    assert "balanced_accuracy" in metrics["val"]["ensemble"]
    spec = read_ensemble_spec(tmp_path / "run" / "ensemble.safetensors")
    assert spec.target == "diagnosis" and spec.classes == ("bkl", "mel", "nv") and spec.head_outputs == 3
    # an index built with it reports the head's melanoma AUC next to the retrieval figures
    config = ExtractorConfig.for_weights(str(tmp_path / "run" / "ensemble.safetensors"), mask_size=32)
    ex = Extractor(config, TORCH)
    build_index(synthetic, tmp_path / "ix", extractor=ex)
    ev = Evaluator(Searcher(tmp_path / "ix", ex))
    report = ev.run(ev.queries_from_index(), config=EvaluationConfig(k=3, vote_k=4, bootstrap=50))
    assert report.head is not None and 0 <= report.head["melanoma_auc_head"]["value"] <= 1


def test_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="target"):
        ClassifierTrainConfig(labels="x", target="benign")
    with pytest.raises(ValueError, match="trainable_stages"):
        ClassifierTrainConfig(labels="x", trainable_stages=0)
    with pytest.raises(ValueError, match="augment"):
        ClassifierTrainConfig(labels="x", augment="x8")
    with pytest.raises(ValueError, match="snapshot"):
        ClassifierTrainConfig(labels="x", diversity="snapshots")
    with pytest.raises(ValueError, match="snapshot_epochs"):
        ClassifierTrainConfig(labels="x", diversity="snapshot", snapshot_epochs=0)
    with pytest.raises(ValueError, match="snapshot_epochs applies"):
        ClassifierTrainConfig(labels="x", snapshot_epochs=2)


@pytest.mark.slow
def test_cli_train_classifier_on_real_subset(tmp_path, capsys):
    require_data(HAM / "labels.csv")
    rc = main(["train", "classifier", "--labels", str(HAM / "labels.csv"), "--split", str(HAM / "split.csv"),
               "--out", str(tmp_path / "run"), "--target", "melanoma", "--members", "2", "--image-size", "32",
               "--epochs", "1",
               "--head-epochs", "1", "--batch-size", "16", "--limit", "48", "--quiet"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "auc" in out["val"] and Path(out["weights"]).is_file()
    rc = main(["eval-classifier", str(tmp_path / "run"), "--labels", str(HAM / "labels.csv"),
               "--split", str(HAM / "split.csv"), "--on", "test", "--limit", "40"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["images"] == 40 and len(res["auc_members"]) == 2


# ------------------------------------------------------------------ the shipped default

def test_packaged_default_ensemble_matches_the_default_config_and_size_budget():
    path = default_ensemble_path()
    spec = read_ensemble_spec(path)
    default = ExtractorConfig()
    assert (spec.backbone, spec.members, spec.feature_dim, spec.image_size) == (
        default.backbone, default.members, default.feature_dim, default.image_size)
    assert ExtractorConfig.for_weights("default") == default.resolved()   # colour "auto": the file's
    weights = REPO / "src" / "dermsearch" / "weights"
    total = sum(p.stat().st_size for p in weights.glob("*.safetensors"))
    assert total <= 60 * 1024 * 1024, f"shipped weights are {total / 2**20:.1f} MB (budget 60 MB)"
    assert "melanoma" in (weights / "MODEL_CARD.md").read_text().lower()


@pytest.mark.slow
def test_phase_two_only_on_reused_members_with_a_metric_loss(synthetic, tmp_path):
    cfg = ClassifierTrainConfig(labels=str(synthetic), target="diagnosis", **{**TINY_TRAIN, "epochs": 1})
    train_classifier(cfg, tmp_path / "src", log=lambda m: None, progress=False)
    source, _ = load_ensemble(tmp_path / "src" / "ensemble.safetensors")
    logs: list[str] = []
    cfg2 = replace(cfg, init_members=str(tmp_path / "src" / "ensemble.safetensors"), metric_loss="supcon",
                   head_select="retrieval", ema=0.5, head_epochs=2, tta=2)
    metrics = train_classifier(cfg2, tmp_path / "head", log=logs.append, progress=False)
    assert any("phase one: skipped" in line for line in logs)
    assert not any(line.startswith("member ") for line in logs)
    net, spec = load_ensemble(tmp_path / "head" / "ensemble.safetensors")
    a, b = source.state_dict(), net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(("members.", "member_heads.")))
    assert not torch.equal(a["dense.weight"], b["dense.weight"])
    assert spec.train["metric_loss"] == "supcon" and "retrieval_macro_p_at_5" in metrics["val"]["ensemble"]
    assert metrics["machine"]["device"] == "cpu" and metrics["machine"]["cpu_count"] >= 1
    assert any("x 2 view(s)" in line for line in logs)
    # the extractor indexes with the views the head was fitted on
    config = ExtractorConfig.for_weights(str(tmp_path / "head" / "ensemble.safetensors"), masks=False)
    assert config.tta == 0 and Extractor(config, TORCH).tta == 2      # "auto": the views its head was fitted on
    assert Extractor(replace(config, tta=1), TORCH).fingerprint != Extractor(config, TORCH).fingerprint
    # members that do not fit the config are refused with the differing setting named
    with pytest.raises(ValueError, match="members"):
        train_classifier(replace(cfg2, members=3), tmp_path / "bad", log=lambda m: None, progress=False)


def test_eval_classifier_leaves_out_unknown_diagnoses(synthetic, tmp_path):
    """`eval-classifier` drops rows whose diagnosis is "unknown" (isic-uda1 marks them melanoma=0),
    as `dermsearch evaluate` does: the AUC equals the one on a file without those rows."""
    from dermsearch.models.ensemble import EnsembleSpec, build_ensemble, save_ensemble

    torch.manual_seed(0)
    spec = EnsembleSpec(members=2, shared_stages=5, feature_dim=16, head_outputs=3, member_heads=True,
                        target="diagnosis", classes=("bkl", "mel", "nv"), image_size=32)
    save_ensemble(build_ensemble(spec).eval(), spec, tmp_path / "e.safetensors")
    rows = list(csv.DictReader(open(synthetic, newline="")))
    for r in rows[:3]:                      # two non-melanomas and one melanoma become unknown
        r["diagnosis"] = "unknown"

    def write(name: str, kept: list[dict]) -> None:      # beside the images the paths point to
        with open(synthetic.parent / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(kept)

    write("with.csv", rows)
    write("without.csv", rows[3:])
    with_unknown = evaluate_classifier(tmp_path / "e.safetensors", synthetic.parent / "with.csv", on=None,
                                       log=lambda _: None)
    without = evaluate_classifier(tmp_path / "e.safetensors", synthetic.parent / "without.csv", on=None,
                                  log=lambda _: None)
    assert with_unknown["excluded_unknown"] == 3 and without["excluded_unknown"] == 0
    assert with_unknown["images"] == without["images"] == len(rows) - 3
    assert with_unknown["melanoma"] == without["melanoma"]
    assert with_unknown["auc_ensemble"] == pytest.approx(without["auc_ensemble"])
    assert with_unknown["auc_members"] == pytest.approx(without["auc_members"])
    # no melanoma left once the unknown rows are out: the AUC is undefined (null), not a crash or NaN
    for r in rows:
        if r["melanoma"] == "1":
            r["diagnosis"] = "unknown"
    write("nomel.csv", rows)
    one_class = evaluate_classifier(tmp_path / "e.safetensors", synthetic.parent / "nomel.csv", on=None,
                                    log=lambda _: None)
    assert one_class["melanoma"] == 0 and one_class["auc_ensemble"] is None and "note" in one_class
    json.dumps(one_class, allow_nan=False)
    for r in rows:
        r["diagnosis"] = "unknown"
    write("all.csv", rows)
    with pytest.raises(ConfigError, match="all.csv: every selected row"):
        evaluate_classifier(tmp_path / "e.safetensors", synthetic.parent / "all.csv", on=None, log=lambda _: None)


def test_phase_two_cache_key_follows_what_the_pooled_vectors_are_computed_from():
    """A cached pooled vector is reused only for the same members, images and presentation: another
    split (names or file), image size, colour, normalisation or view count computes them afresh, while
    settings that only phase two uses share them."""
    cfg = ClassifierTrainConfig(labels="l.csv", split="s.csv")
    key = pooled_cache_key(cfg, ["a", "b"], 7)
    assert key == pooled_cache_key(replace(cfg), ["a", "b"], 7)
    for change in [dict(val_split="test"), dict(train_split="trainval"), dict(split="other.csv"),
                   dict(labels="other.csv"), dict(image_size=160), dict(colour="none" if cfg.colour != "none"
                                                                          else "shades-of-gray"),
                   dict(tta=1 if cfg.tta != 1 else 4), dict(limit=48)]:
        assert pooled_cache_key(replace(cfg, **change), ["a", "b"], 7) != key, change
    assert pooled_cache_key(cfg, ["a", "c"], 7) != key and pooled_cache_key(cfg, ["a", "b"], 1) != key
    assert pooled_cache_key(replace(cfg, backbone="efficientnet-b1"), ["a", "b"], 7) != key   # its normalisation
    for phase_two_only in [dict(head_lr=cfg.head_lr * 2), dict(head_epochs=cfg.head_epochs + 1),
                           dict(metric_loss="none" if cfg.metric_loss != "none" else "supcon")]:
        assert pooled_cache_key(replace(cfg, **phase_two_only), ["a", "b"], 7) == key, phase_two_only


def test_balanced_epoch_draws_every_class_about_equally_and_only_from_its_rows():
    """Class-balanced sampling (the shipped default): an epoch of as many draws as rows, with each
    class drawn about equally often however rare, and only rows of the epoch's base."""
    y = np.array([0] * 900 + [1] * 90 + [2] * 10)
    base = np.arange(995)[::-1]                              # 5 of class 2's 10 rows are left out of the base
    rng = np.random.default_rng(0)
    draws = np.concatenate([epoch_sample(True, base, y, rng) for _ in range(20)])
    assert len(draws) == 20 * len(base) and set(draws.tolist()) <= set(base.tolist())
    share = np.bincount(y[draws], minlength=3) / len(draws)
    assert np.allclose(share, 1 / 3, atol=0.02), share          # natural mix: 0.90 / 0.09 / 0.01
    plain = epoch_sample(False, base, y, np.random.default_rng(0))
    assert sorted(plain.tolist()) == sorted(base.tolist()) and not np.array_equal(plain, base)

