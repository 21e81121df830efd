"""Segmenters, focal Tversky loss, augmentation, training and the packaged default."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice
from PIL import Image

from dermsearch.cli.main import main
from dermsearch.evaluate.masks import dice_scores, jaccard_scores
from dermsearch.models.learned_segmenter import LearnedSegmenter, default_segmenter_path
from dermsearch.models.segmentation import create_segmenter, list_segmenters
from dermsearch.train.augment import Augmenter, expand_x7, grid_mask
from dermsearch.train.losses import FocalTverskyLoss, focal_tversky_loss
from dermsearch.train.segmenter import SegTrainConfig, train_segmenter

from .conftest import SHARED, lesion_image, require_data


def lesion_pair(seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(0.35, 0.65, 2) * size
    ry, rx = rng.uniform(0.15, 0.3, 2) * size
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    img = np.where(mask[..., None], rng.uniform([60, 30, 20], [130, 90, 70]), [225, 180, 160])
    img = img + rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), mask


@pytest.mark.parametrize("arch", ["unet", "runet", "r2unet"])
@pytest.mark.parametrize("size", [(32, 32), (64, 48), (128, 96)])
def test_output_shapes(arch, size):
    model = create_segmenter(arch, width=4, depth=4, t=2).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 1, *size)
    assert torch.isfinite(out).all()


def test_depth_and_recurrence_are_configurable():
    small = create_segmenter("r2unet", width=4, depth=3, t=1)
    big = create_segmenter("r2unet", width=8, depth=5, t=3)
    assert sum(p.numel() for p in big.parameters()) > 10 * sum(p.numel() for p in small.parameters())
    assert big(torch.randn(1, 3, 32, 32)).shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match="multiple of 16"):
        big(torch.randn(1, 3, 40, 40))


def test_registry_unknown_name():
    assert list_segmenters() == ["r2unet", "runet", "unet"]
    with pytest.raises(KeyError, match="r2unet"):
        create_segmenter("segnet")


def test_focal_tversky_hand_values():
    target = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 2, 2)
    # p = 0.5 everywhere: TP = 1, FN = 1, FP = 1 -> TI = 1 / (1 + 0.7 + 0.3) = 0.5 -> 0.5 ** 0.75
    loss = focal_tversky_loss(torch.zeros(1, 1, 2, 2), target)
    assert float(loss) == pytest.approx(0.5 ** 0.75, abs=1e-4)
    # p = sigmoid(2) on the lesion, sigmoid(-2) off it; alpha/beta asymmetric
    s = float(torch.sigmoid(torch.tensor(2.0)))
    logits = torch.tensor([2.0, 2.0, -2.0, -2.0]).view(1, 1, 2, 2)
    tp, fn, fp = 2 * s, 2 * (1 - s), 2 * (1 - s)
    for a, b, g in ((0.7, 0.3, 4 / 3), (0.3, 0.7, 1.0), (0.5, 0.5, 2.0)):
        ti = tp / (tp + a * fn + b * fp)
        assert float(focal_tversky_loss(logits, target, a, b, g)) == pytest.approx((1 - ti) ** (1 / g), abs=1e-4)
    # alpha weighs false negatives: missing the lesion costs more than over-segmenting
    miss = torch.tensor([-3.0, -3.0, -3.0, -3.0]).view(1, 1, 2, 2)
    over = torch.tensor([3.0, 3.0, 3.0, 3.0]).view(1, 1, 2, 2)
    assert float(FocalTverskyLoss()(miss, target)) > float(FocalTverskyLoss()(over, target))


def test_dice_and_jaccard_against_monai():
    rng = np.random.default_rng(0)
    p = torch.from_numpy(rng.random((6, 1, 16, 16)) < 0.4)
    t = torch.from_numpy(rng.random((6, 1, 16, 16)) < 0.5)
    ours = dice_scores(p, t)
    ref = compute_dice(p.float(), t.float(), include_background=True)[:, 0]
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-6)
    inter = (p & t).flatten(1).sum(1).double()
    union = (p | t).flatten(1).sum(1).double()
    np.testing.assert_allclose(jaccard_scores(p, t).numpy(), (inter / union).numpy())
    empty = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    assert dice_scores(empty, empty).item() == 1.0


def test_gridmask_fraction_and_determinism():
    x = torch.ones(200, 3, 128, 128)
    for ratio in (0.3, 0.5):
        _, keep = grid_mask(x, 24, 64, ratio, torch.Generator().manual_seed(1))
        assert float(1 - keep.mean()) == pytest.approx(ratio**2, abs=0.03)
    a, _ = grid_mask(x[:4], 16, 32, 0.4, torch.Generator().manual_seed(5))
    b, _ = grid_mask(x[:4], 16, 32, 0.4, torch.Generator().manual_seed(5))
    c, _ = grid_mask(x[:4], 16, 32, 0.4, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augmenter_moves_masks_with_images_and_x7():
    img = torch.zeros(8, 3, 32, 32)
    img[:, :, :, :8] = 1.0  # a bright band on the left
    mask = torch.zeros(8, 1, 32, 32)
    mask[:, :, :, :8] = 1.0
    torch.manual_seed(0)
    from dermsearch.train.augment import AugmentConfig
    aug = Augmenter(AugmentConfig(p_color=0.0, p_gridmask=0.0))
    out, m = aug(img, mask)
    assert torch.equal(out[:, :1] > 0.5, m > 0.5)  # geometry applied to both alike
    x7, m7 = expand_x7(img[:2], mask[:2])
    assert x7.shape == (16, 3, 32, 32) and m7.shape == (16, 1, 32, 32)
    assert torch.equal(m7[4:6], mask[:2].flip(-1))


def _write_dataset(root, n=24, size=32):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    with open(root / "labels.csv", "w", newline="") as f, open(root / "split.csv", "w", newline="") as g:
        w, ws = csv.writer(f), csv.writer(g)
        w.writerow(["image_id", "image_path", "mask_path"])
        ws.writerow(["image_id", "split"])
        for i in range(n):
            img, mask = lesion_pair(i, size)
            Image.fromarray(img).save(root / "images" / f"s{i}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"s{i}.png")
            w.writerow([f"s{i}", f"images/s{i}.png", f"masks/s{i}.png"])
            ws.writerow([f"s{i}", "val" if i % 4 == 0 else "train"])


def test_tiny_training_lowers_loss_and_resumes(tmp_path):
    _write_dataset(tmp_path / "data")
    cfg = SegTrainConfig(labels=str(tmp_path / "data/labels.csv"), split=str(tmp_path / "data/split.csv"),
                         arch="unet", width=4, depth=3, image_size=32, epochs=4, batch_size=6, lr=1e-2,
                         augment=False)
    class Stop(Exception):
        pass

    def stop_after_epoch_2(msg):
        if msg.startswith("epoch 2/"):
            raise Stop  # an interruption right after epoch 2 was saved

    with pytest.raises(Stop):
        train_segmenter(cfg, tmp_path / "run", log=stop_after_epoch_2, progress=False)
    logs = []
    result = train_segmenter(cfg, tmp_path / "run", log=logs.append, progress=False)
    assert any("resuming after epoch 2" in m for m in logs)
    h = result["history"]
    assert [r["epoch"] for r in h] == [1, 2, 3, 4]
    assert {r["precision"] for r in h} == {"fp32"}           # each epoch records its arithmetic (auto on the CPU)
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert (tmp_path / "run/best.safetensors").is_file()
    seg = LearnedSegmenter(tmp_path / "run/best.safetensors")
    assert seg.input_size == 32


def test_packaged_default_segments_a_lesion():
    seg = LearnedSegmenter(default_segmenter_path())
    assert seg.info["model"]["arch"] == "unet" and seg.input_size == 128
    dice = []
    for i in range(4):
        img, mask = lesion_pair(100 + i, 128)
        pred = seg.segment_batch(img[None])[0]
        dice.append(2 * (pred & mask).sum() / (pred.sum() + mask.sum()))
    assert np.mean(dice) > 0.8


@pytest.mark.slow
def test_cli_train_and_eval_on_real_subset(tmp_path, capsys):
    labels = SHARED / "ham10000" / "labels.csv"
    require_data(labels)
    rc = main(["train", "segmenter", "--labels", str(labels), "--split", str(SHARED / "ham10000/split.csv"),
               "--out", str(tmp_path / "run"), "--arch", "r2unet", "--width", "4", "--depth", "3",
               "--image-size", "64", "--epochs", "1", "--batch-size", "8", "--limit", "24", "--device", "cpu",
               "--quiet"])
    assert rc == 0 and "best val Dice" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "run/config.json").read_text())
    assert cfg["model"]["arch"] == "r2unet" and cfg["train"]["epochs"] == 1
    rc = main(["eval-segmenter", "--labels", str(SHARED / "ham10000-600/labels.csv"), "--segmenter", "otsu",
               str(tmp_path / "run"), "--image-size", "64", "--device", "cpu", "--threads", "1", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["otsu"]["images"] == 150 and 0 <= out[str(tmp_path / "run")]["dice"] <= 1
    if not torch.cuda.is_available():   # like every command that runs a network: a clear refusal, no traceback
        rc = main(["eval-segmenter", "--labels", str(SHARED / "ham10000-600/labels.csv"), "--segmenter", "default",
                   "--image-size", "64", "--device", "cuda"])
        err = capsys.readouterr().err
        assert rc == 2 and "no CUDA device" in err and "Traceback" not in err


def test_predict_masks_matches_the_segmenter_the_extractor_uses():
    """Evaluation (eval-segmenter) and indexing normalise and threshold the same way."""
    from dermsearch.models.learned_segmenter import load_segmenter, predict_masks

    seg = LearnedSegmenter(default_segmenter_path())
    images = np.stack([np.asarray(lesion_image(s, seg.input_size)) for s in range(3)])     # [B, S, S, 3] uint8
    model, info = load_segmenter(default_segmenter_path())
    masks = predict_masks(model, info, torch.from_numpy(images).permute(0, 3, 1, 2), batch_size=2)
    assert masks.shape == (3, 1, seg.input_size, seg.input_size)
    assert np.array_equal(masks[:, 0].numpy(), seg.segment_batch(images))
    assert 0 < masks.float().mean() < 1          # a lesion is found, not the whole image
