"""#17's training tools: colour constancy, feature-retrieval figures, metric losses, EMA, phase-two selection."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from dermsearch.evaluate.feature_knn import feature_neighbours, feature_retrieval
from dermsearch.evaluate.metrics import macro_mean, vote_auc
from dermsearch.extract import Extractor, ExtractorConfig
from dermsearch.extract.colour import apply_colour, shades_of_gray, shades_of_gray_batch
from dermsearch.models.ensemble import EnsembleFeatureNet
from dermsearch.models.registry import create_backbone
from dermsearch.runtime import Runtime
from dermsearch.train.classifier import ClassifierTrainConfig
from dermsearch.train.head import HeadData, HeadTask, fit_head
from dermsearch.train.losses import metric_loss_module

from .conftest import TORCH, lesion_image

# ------------------------------------------------------------------ colour constancy


def test_shades_of_gray_hand_values():
    # a uniform (100, 50, 200) image: e = (100, 50, 200) for every p, |e| = 229.129...;
    # gain_c = |e| / (sqrt(3) e_c) maps every channel to |e| / sqrt(3) = 132.29 -> 132: grey
    img = np.tile(np.array([100, 50, 200], np.uint8), (4, 3, 1))
    assert (shades_of_gray(img) == 132).all()
    # a grey image is left as it is
    grey = np.full((5, 5, 3), 80, np.uint8)
    assert np.array_equal(shades_of_gray(grey), grey)
    # p = 6 by hand: R is 0 on half the pixels and 200 on the other half -> e_R = 200 / 2^(1/6);
    # G and B are 100 everywhere -> e_G = e_B = 100
    img = np.zeros((2, 2, 3), np.uint8)
    img[..., 1:] = 100
    img[0, :, 0] = 200
    e = np.array([200 / 2 ** (1 / 6), 100, 100])
    gain = np.linalg.norm(e) / (math.sqrt(3) * e)
    want = np.clip(np.rint(img * gain), 0, 255).astype(np.uint8)
    assert np.array_equal(shades_of_gray(img, p=6), want)
    assert want[0, 0, 0] == round(200 * gain[0]) and want[1, 1, 1] == round(100 * gain[1])
    # p = 1 is Gray World: the channel means become equal (up to rounding)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 200, (16, 16, 3)).astype(np.uint8)
    means = shades_of_gray(img, p=1).reshape(-1, 3).astype(float).mean(0)
    assert means.max() - means.min() < 1.0
    assert np.array_equal(apply_colour(img, "none"), img)
    with pytest.raises(ValueError, match="shades-of-gray"):
        apply_colour(img, "retinex")


def test_shades_of_gray_batch_matches_the_image_function():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 24, 20, 3)).astype(np.uint8)
    images[2] = 0                                      # all black: left alone
    batch = shades_of_gray_batch(torch.from_numpy(images).permute(0, 3, 1, 2))
    for i in range(3):
        assert np.array_equal(batch[i].permute(1, 2, 0).numpy(), shades_of_gray(images[i]))
    # chunked (what keeps a whole training set in memory bounds): the same, chunk by chunk
    chunked = shades_of_gray_batch(torch.from_numpy(images).permute(0, 3, 1, 2), chunk=2)
    assert torch.equal(chunked, batch)


def test_colour_is_applied_identically_at_index_and_query_time():
    """The extractor corrects the network's input the same way for every call (index build or query):
    extracting an image with colour="shades-of-gray" equals extracting its corrected pixels without."""
    base = dict(weights="imagenet", feature="pooled", members=1, image_size=64, style=True, masks=False,
                gram_pool="image", gram_margin=0.0, gram_norm="none", gram_weights="inverse-channels")
    sog = Extractor(ExtractorConfig(**base, colour="shades-of-gray"), Runtime(backend="torch"))
    plain = Extractor(ExtractorConfig(**base, colour="none"), Runtime(backend="torch"))
    img = lesion_image(3, 64)
    a = sog.extract([img])
    corrected = Image.fromarray(shades_of_gray(np.asarray(img.resize((64, 64), Image.Resampling.BILINEAR))))
    b = plain.extract([corrected])
    np.testing.assert_allclose(a.features, b.features, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.styles, b.styles, rtol=1e-4, atol=1e-7)
    again = sog.extract([lesion_image(3, 64), lesion_image(4, 64)])   # a batch (index) vs one query
    np.testing.assert_allclose(again.features[:1], a.features, rtol=1e-5, atol=1e-5)
    assert sog.fingerprint != plain.fingerprint
    assert ExtractorConfig().resolved().colour == "shades-of-gray"    # the packaged model's input
    assert ExtractorConfig.for_weights("imagenet").colour == "none"   # ImageNet never saw corrected images
    assert ExtractorConfig(weights="imagenet", feature="pooled", members=1).resolved().colour == "none"
    assert Extractor(ExtractorConfig(**base), Runtime(backend="torch")).config.colour == "none"   # "auto"
    old = {k: v for k, v in ExtractorConfig().to_dict().items() if k != "colour"}   # an index from before
    assert ExtractorConfig.from_dict(old).colour == "none"
    with pytest.raises(ValueError, match="colour"):
        ExtractorConfig(**base, colour="grey-edge")


# ------------------------------------------------------------------ feature retrieval figures


def _naive_neighbours(q, c, k, metric, qg, cg):
    out = []
    for i in range(len(q)):
        scored = []
        for j in range(len(c)):
            if qg is not None and qg[i] == cg[j]:
                continue
            if metric == "euclidean":
                d = float(((q[i] - c[j]) ** 2).sum())
            else:
                d = -float(q[i] @ c[j] / (np.linalg.norm(q[i]) * np.linalg.norm(c[j])))
            scored.append((d, j))
        out.append([j for _, j in sorted(scored)[:k]])
    return np.array(out)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_feature_neighbours_match_a_naive_loop(metric):
    rng = np.random.default_rng(2)
    q, c = rng.normal(size=(13, 6)), rng.normal(size=(40, 6))
    qg = np.array([f"L{i % 5}" for i in range(13)], dtype=object)
    cg = np.array([f"L{i % 9}" for i in range(40)], dtype=object)
    got = feature_neighbours(q, c, 7, metric, qg, cg, block=4)
    assert np.array_equal(got, _naive_neighbours(q, c, 7, metric, qg, cg))
    assert not any(qg[i] == cg[j] for i in range(13) for j in got[i])
    # exact ties go to the lower index, also across the k-th place
    tied = feature_neighbours(np.zeros((1, 2)), np.array([[1.0, 0]] * 6 + [[0.5, 0]]), 3)
    assert tied.tolist() == [[6, 0, 1]]
    # fewer candidates than k: all of them, ranked
    assert feature_neighbours(q, c[:3], 7, metric).shape == (13, 3)


def test_feature_retrieval_figures_by_hand():
    # 1-d features: queries at 0 and 10; candidates near each
    c = np.array([[0.1], [0.2], [0.3], [9.9], [10.2]])
    cl = np.array(["a", "b", "a", "b", "b"], dtype=object)
    cm = np.array([0, 1, 0, 1, 1])
    q = np.array([[0.0], [10.0], [10.05]])
    ql = np.array(["a", "b", "x"], dtype=object)
    qm = np.array([0, 1, -1])                          # -1: unknown, left out of the AUC
    r = feature_retrieval(q, ql, qm, c, cl, cm, k=2, vote_k=2)
    # query 0: neighbours 0.1 (a), 0.2 (b) -> P@2 1/2; query 1: 9.9 (b), 10.2 (b) -> 1; query 2: 0
    assert r["p_at_5"] == pytest.approx(0.5)
    assert r["macro_p_at_5"] == pytest.approx(macro_mean(np.array([0.5, 1.0, 0.0]), ql))
    assert r["vote_auc"] == pytest.approx(vote_auc(np.array([0, 1]), np.array([[0, 1], [1, 1]])))
    assert r["knn_balanced_accuracy"] == pytest.approx((1 + 1 + 0) / 3)   # 'a' wins its tie by the nearest


# ------------------------------------------------------------------ metric learning, EMA, selection


def _clustered(n=96, classes=3, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centres = torch.randn(classes, dim, generator=g) * 2
    return centres[y] + torch.randn(n, dim, generator=g), y


@pytest.mark.parametrize("name", ["supcon", "proxy-anchor"])
def test_metric_loss_is_wired_and_falls_with_training(name):
    x, y = _clustered()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.SELU(), torch.nn.Linear(16, 16))
    loss_fn = metric_loss_module(name, 3, 16)
    params = list(model.parameters()) + list(loss_fn.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    with torch.no_grad():
        first = float(loss_fn(model(x), y))
    for _ in range(40):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = float(loss_fn(model(x), y))
    assert last < first - 0.3, (first, last)   # supcon's floor is log(positives) > 0: a fall, not a ratio
    assert metric_loss_module("none", 3, 16) is None
    with pytest.raises(ValueError, match="supcon"):
        metric_loss_module("triplet", 3, 16)


def _tiny_ensemble(dim=16, outputs=3):
    members = [create_backbone("efficientnet-lite0", "imagenet") for _ in range(2)]
    for m in members:
        m.classifier = None
    return EnsembleFeatureNet(members, dim, outputs, shared_stages=5)


def _head_data(members=2, pooled=1280, n_tr=120, n_val=45, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, members, pooled, generator=g)

    def make(n):
        y = torch.arange(n) % 3
        return centres[y] + 0.8 * torch.randn(n, members, pooled, generator=g), y

    (xt, yt), (xv, yv) = make(n_tr), make(n_val)
    names = np.array(["bkl", "mel", "nv"], dtype=object)
    return HeadData(xt, yt, xv, yv, (yv.numpy() == 1).astype(int), names[yt.numpy()], names[yv.numpy()],
                    (yt.numpy() == 1).astype(int))


@pytest.mark.parametrize("overrides", [
    {"metric_loss": "supcon", "head_select": "retrieval"},
    {"metric_loss": "proxy-anchor", "ema": 0.9, "balanced": True},
])
def test_phase_two_with_metric_loss_learns_and_selects(overrides):
    cfg = replace(ClassifierTrainConfig(labels="-", head_epochs=4, batch_size=32, feature_dim=16, head_lr=3e-3),
                  **overrides)
    torch.manual_seed(0)
    net = _tiny_ensemble()
    data = _head_data()

    def metrics(logits):
        return {"loss": 0.0, "auc": 0.5, "balanced_accuracy": float((logits.argmax(1) == data.y_val).float().mean())}

    best, history = fit_head(net, cfg, HeadTask(data, metrics, lambda vm: vm["balanced_accuracy"]),
                             log=lambda s: None)
    assert len(history) == 4 and history[-1]["train_loss"] < history[0]["train_loss"]
    key = "retrieval_macro_p_at_5" if cfg.head_select == "retrieval" else "balanced_accuracy"
    scores = [h[f"val_{key}"] for h in history]
    assert best[key] == max(scores)              # the kept epoch is the best by the rule
    assert best["retrieval_macro_p_at_5"] > 0.8  # three well-separated classes
    # the net now holds the selected epoch's weights: its val feature reproduces the kept figure
    with torch.inference_mode():
        f_val, _ = net.combine(list(data.x_val.unbind(1)))
        f_tr, _ = net.combine(list(data.x_train.unbind(1)))
    r = feature_retrieval(f_val.numpy(), data.val_labels, data.val_melanoma, f_tr.numpy(), data.train_labels,
                          data.train_melanoma)
    assert r["macro_p_at_5"] == pytest.approx(best["retrieval_macro_p_at_5"], abs=1e-9)


def test_training_config_rejects_unknown_options():
    for bad in ({"metric_loss": "arcface"}, {"head_select": "loss"}, {"colour": "retinex"}, {"ema": 1.0}):
        with pytest.raises(ValueError):
            ClassifierTrainConfig(labels="-", **bad)


def test_autocast_follows_the_runtime_precision():
    from dermsearch.train.harness import autocast, resolved_precision

    def out_dtype(device: str, precision: str) -> torch.dtype:
        layer = torch.nn.Linear(4, 4).to(device)
        with autocast(torch.device(device), precision):
            return layer(torch.randn(2, 4, device=device)).dtype

    assert out_dtype("cpu", "auto") == torch.float32          # the default on the CPU: float32 as before
    assert out_dtype("cpu", "fp32") == torch.float32
    assert out_dtype("cpu", "bf16") == torch.bfloat16         # asked for: bfloat16 autocast on the CPU too
    assert [resolved_precision(torch.device(d), p) for d, p in
            (("cpu", "auto"), ("cuda", "auto"), ("cuda", "fp32"), ("cpu", "bf16"))] == ["fp32", "bf16", "fp32", "bf16"]
    with pytest.raises(ValueError, match="auto, fp32 or bf16"):
        resolved_precision(torch.device("cpu"), "fp16")
    if torch.cuda.is_available():   # exercised on a GPU machine only
        assert out_dtype("cuda", "auto") == torch.bfloat16
        assert out_dtype("cuda", "fp32") == torch.float32


def test_a_bf16_member_step_on_the_cpu_lowers_the_loss_in_float32():
    """Phase one's loss under ``precision="bf16"``: the network runs in bfloat16, the loss and the
    weights stay float32, and a few steps on a fixed batch lower the loss."""
    from dermsearch.models import create_backbone
    from dermsearch.train.losses import multiclass_focal_loss
    from dermsearch.train.members import Member as _Member

    torch.manual_seed(0)
    backbone = create_backbone("efficientnet-lite0")
    backbone.classifier = None
    member = _Member(backbone, 6, 3, 0.0)        # stage 7 trained on stage-6 outputs, as with a frozen prefix
    with torch.no_grad():
        h = backbone.forward_prefix(torch.rand(8, 3, 64, 64) * 255, 6)[0]
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    opt = torch.optim.AdamW(member.trainable(), lr=1e-3)
    seen = []
    member.head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    losses = []
    for _ in range(8):
        member.set_train()
        loss = member.loss(h, y, lambda logits, y: multiclass_focal_loss(logits, y), 1.0, "bf16")
        assert loss.dtype == torch.float32
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert seen == [torch.bfloat16] * 8                    # the network did run in bfloat16
    assert all(p.dtype == torch.float32 for p in member.parameters())


# ------------------------------------------------------------------ test-time views


def test_tta_views_average_the_members_pooled_vectors():
    from dermsearch.models.ensemble import tta_views

    torch.manual_seed(0)
    net = _tiny_ensemble().eval()
    x = torch.randn(3, 3, 32, 32)
    views = tta_views(x, 4)
    assert torch.equal(views[1], x.flip(3)) and torch.equal(views[3][0, 0], x[0, 0].rot90(1, (0, 1)))
    with torch.inference_mode():
        by_hand = [torch.stack([o.pooled for o in net.member_outputs(v)]) for v in views]
        mean = torch.stack(by_hand).mean(0)
        want, _ = net.combine(list(mean.unbind(0)))
        got = net(x, views=4)
        plain = net(x)
    torch.testing.assert_close(got.feature, want, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got.feature, plain.feature)
    for a, b in zip(got.member_taps[0], plain.member_taps[0]):    # style taps: the image as it is
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="1, 2 or 4"):
        tta_views(x, 3)


@pytest.mark.slow
def test_extractor_tta_torch_and_onnx_agree_and_style_is_unchanged(tmp_path):
    base = dict(weights="imagenet", feature="ensemble", members=2, feature_dim=16, image_size=64, masks=False,
                gram_pool="image", gram_margin=0.0, gram_norm="none", gram_weights="inverse-channels")
    images = [lesion_image(5, 64), lesion_image(6, 64)]
    t4 = Extractor(ExtractorConfig(**base, tta=4), Runtime(backend="torch")).extract(images)
    o4 = Extractor(ExtractorConfig(**base, tta=4), Runtime(backend="onnx")).extract(images)
    t1 = Extractor(ExtractorConfig(**base), Runtime(backend="torch")).extract(images)
    np.testing.assert_allclose(o4.features, t4.features, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(t4.styles, t1.styles, rtol=1e-5, atol=1e-8)
    assert not np.allclose(t4.features, t1.features)
    with pytest.raises(ValueError, match="tta"):
        ExtractorConfig(**base, tta=3)


@pytest.mark.slow
def test_learned_gram_weights_follow_the_members_not_the_dense_layer(tmp_path):
    """The packaged β are bound to the members that make the Grams: a new Dense layer/head on the same
    members keeps them; other members are refused."""
    from dermsearch.models.ensemble import default_ensemble_path, load_ensemble, read_ensemble_spec, save_ensemble

    net, spec = load_ensemble(default_ensemble_path())
    torch.manual_seed(1)
    net.dense.reset_parameters()
    save_ensemble(net, spec, tmp_path / "new-head.safetensors")
    learned = dict(gram_pool="lesion", gram_margin=0.05, gram_norm="l2", gram_weights="learned")
    ex = Extractor(ExtractorConfig.for_weights(str(tmp_path / "new-head.safetensors"), **learned), TORCH)
    packaged = Extractor(ExtractorConfig(), TORCH)
    assert ex.betas == packaged.betas and ex.network_fingerprint != packaged.network_fingerprint
    torch.manual_seed(2)
    net.members[1].head.conv.reset_parameters()
    save_ensemble(net, read_ensemble_spec(default_ensemble_path()), tmp_path / "new-members.safetensors")
    with pytest.raises(ValueError, match="other member networks"):
        Extractor(ExtractorConfig.for_weights(str(tmp_path / "new-members.safetensors"), **learned), TORCH)


# ------------------------------------------------------------------ the harness


def _toy_run(directory, epochs, log, prefix="m0-"):
    from dermsearch.train.harness import Run, RunFiles

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    return Run(model, opt, sched, RunFiles(directory, prefix), {"lr": 0.1}, epochs, log=log)


def _toy_fit(run):
    from dermsearch.train.harness import fit

    x, y = torch.randn(16, 3, generator=torch.Generator().manual_seed(1)), torch.ones(16, 1)

    def train_epoch(epoch):
        loss = ((run.model(x) - y) ** 2).mean()
        run.optimizer.zero_grad()
        loss.backward()
        run.optimizer.step()
        run.scheduler.step()
        return float(loss.detach())

    def validate():
        with torch.no_grad():
            v = float(((run.model(x) - y) ** 2).mean())
        return {"loss": v}, -v

    return fit(run, train_epoch, validate, lambda rec, imp: f"epoch {rec['epoch']}")


def test_harness_refuses_legacy_state_until_migrated_and_refuses_a_half_saved_epoch(tmp_path, capsys):
    import json

    from dermsearch.errors import DermsearchError
    from dermsearch.train import migrate

    logs: list[str] = []
    state = _toy_fit(_toy_run(tmp_path, 2, logs.append, prefix=""))
    assert [h["epoch"] for h in state["history"]] == [1, 2]
    # a state file from before the harness (a segmenter's): "config" instead of "key", "best_dice", no rng
    st = json.loads((tmp_path / "state.json").read_text())
    legacy = {"config": {"lr": 0.1, "device": "cuda"}, "best_dice": st["best"],
              **{k: st[k] for k in ("epoch", "history", "optimizer", "scheduler")}}
    (tmp_path / "state.json").write_text(json.dumps(legacy))
    # refused with the way out, and nothing of it is removed
    with pytest.raises(DermsearchError, match=r"python -m dermsearch\.train\.migrate .*state\.json"):
        _toy_fit(_toy_run(tmp_path, 3, logs.append, prefix=""))
    assert json.loads((tmp_path / "state.json").read_text()) == legacy and (tmp_path / "last.safetensors").is_file()
    # the migration gives it the key it resumed against (its config without runtime fields) and its best
    assert migrate.main([str(tmp_path)]) == 0 and "1 state file(s) converted" in capsys.readouterr().out
    migrated = json.loads((tmp_path / "state.json").read_text())
    assert migrated["key"] == {"lr": 0.1} and migrated["best"] == st["best"]
    assert migrate.migrate([tmp_path]) == []            # converting again finds nothing to do
    logs.clear()
    state = _toy_fit(_toy_run(tmp_path, 3, logs.append, prefix=""))
    assert any("resuming after epoch 2" in line for line in logs) and [h["epoch"] for h in state["history"]] == [
        1, 2, 3]
    # a classifier member's legacy key: its config as trained then (no colour, no reused members), without
    # phase two's settings
    member = tmp_path / "members" / "m3-state.json"
    member.parent.mkdir()
    member.write_text(json.dumps({"config": {"lr": 0.1, "device": "cpu", "head_epochs": 9, "members": 5},
                                  "epoch": 0, "best": 0.5, "history": []}))
    assert migrate.migrate([tmp_path]) == [member]
    assert json.loads(member.read_text())["key"] == {"colour": "none", "init_members": "", "lr": 0.1, "members": 5}
    _toy_fit(_toy_run(tmp_path, 3, logs.append))       # m0-: the half-saved epoch below
    # the weights of epoch 3 were saved but the run stopped before its state: nothing of it is trusted
    st = json.loads((tmp_path / "m0-state.json").read_text())
    (tmp_path / "m0-state.json").write_text(json.dumps({**st, "epoch": 1, "history": st["history"][:2]}))
    logs.clear()
    state = _toy_fit(_toy_run(tmp_path, 3, logs.append))
    assert any("unfinished epoch" in line for line in logs)
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3]      # trained again from the start


def test_an_index_of_an_earlier_packaged_model_is_refused_with_the_way_out():
    """Settings written for the previous packaged ensemble (uncorrected input) no longer describe the
    packaged file: the extractor refuses them and says to rebuild, instead of mixing models."""
    old = ExtractorConfig.from_dict({k: v for k, v in ExtractorConfig().to_dict().items() if k != "colour"})
    with pytest.raises(ValueError, match="must be rebuilt"):
        Extractor(old, Runtime(backend="torch"))


def test_a_file_with_the_packaged_members_indexes_with_the_packaged_style_by_default(tmp_path):
    """A new head on the packaged members (e.g. `train classifier --init-members default`) keeps the
    packaged style by default: the file records its members' fingerprint as a load computes it (after
    the fp16 round trip); other members get the paper's style."""
    from dermsearch.extract.config import PAPER_STYLE
    from dermsearch.models import state_fingerprint
    from dermsearch.models.ensemble import default_ensemble_path, load_ensemble, read_ensemble_spec, save_ensemble

    net, spec = load_ensemble(default_ensemble_path())
    torch.manual_seed(1)
    net.dense.reset_parameters()
    save_ensemble(net, spec, tmp_path / "new-head.safetensors")
    cfg = ExtractorConfig.for_weights(str(tmp_path / "new-head.safetensors"))
    packaged_style = {k: getattr(ExtractorConfig(), k) for k in PAPER_STYLE}
    assert {k: getattr(cfg, k) for k in PAPER_STYLE} == packaged_style and cfg.gram_weights == "learned"

    net.members[1].head.conv.reset_parameters()        # fp32 values that fp16 rounds
    save_ensemble(net, spec, tmp_path / "new-members.safetensors")
    recorded = read_ensemble_spec(tmp_path / "new-members.safetensors").members_fingerprint
    loaded, _ = load_ensemble(tmp_path / "new-members.safetensors")
    assert recorded == state_fingerprint(loaded.members) != state_fingerprint(net.members)
    cfg = ExtractorConfig.for_weights(str(tmp_path / "new-members.safetensors"))
    assert {k: getattr(cfg, k) for k in PAPER_STYLE} == PAPER_STYLE
