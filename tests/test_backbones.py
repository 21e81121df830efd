"""Contract tests over every registered backbone, and proof the Lite weights are real."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from dermsearch.models import WeightsNotFoundError, create_backbone, list_backbones, save_checkpoint
from dermsearch.models.ensemble import EnsembleFeatureNet
from dermsearch.models.normalization import NORMALISATIONS

ALL = list_backbones()


def test_registry_lists_b0_to_b7_and_lite():
    assert ALL == sorted([f"efficientnet-b{i}" for i in range(8)] + [f"efficientnet-lite{i}" for i in range(3)])


def test_unknown_name_is_keyerror_listing_valid_names():
    with pytest.raises(KeyError) as e:
        create_backbone("efficientnet-b9")
    assert "efficientnet-lite0" in str(e.value) and "efficientnet-b7" in str(e.value)


@pytest.mark.parametrize("name", ALL)
def test_contract_seven_taps_declared_channels_no_nan(name):
    torch.manual_seed(0)
    model = create_backbone(name).eval()
    assert len(model.out_channels) == 7
    with torch.no_grad():
        out = model(torch.randn(2, 3, 48, 40))
    assert len(out.features) == 7
    assert tuple(f.shape[1] for f in out.features) == model.out_channels
    assert out.pooled.shape == (2, model.pooled_dim)
    # strides 2,4,8,16,16,32,32 with SAME padding: ceil(size / stride)
    assert [f.shape[-2:] for f in out.features][-1] == (2, 2)
    for f in [*out.features, out.pooled]:
        assert torch.isfinite(f).all()


def test_lite0_declared_taps():
    m = create_backbone("efficientnet-lite0")
    assert m.out_channels == (16, 24, 40, 80, 112, 192, 320)
    assert [len(s) for s in m.stages] == [1, 2, 2, 3, 3, 4, 1]  # 16 blocks, as in the checkpoint


def test_b6_matches_paper_feature_maps():
    # The paper: EfficientNet-B6 gives 2304 feature maps, 12x12 at 384 px.
    m = create_backbone("efficientnet-b6")
    assert m.pooled_dim == 2304
    assert m.out_channels == (32, 40, 72, 144, 200, 344, 576)


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"])
def test_lite_imagenet_weights_load_strictly(name):
    m = create_backbone(name, "imagenet")
    assert m.classifier is not None and m.classifier.out_features == 1000


def _classify(name, image):
    m = create_backbone(name, "imagenet").eval()
    size = m.default_size
    x = np.asarray(Image.fromarray(image).convert("RGB").resize((size, size), Image.Resampling.BILINEAR), np.float32)
    mean, std = NORMALISATIONS["tf"]
    x = torch.from_numpy((x - np.array(mean)) / np.array(std)).float().permute(2, 0, 1)[None]
    with torch.no_grad():
        return m.logits(m(x).pooled).softmax(1)[0]


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite2"])
def test_pretrained_weights_are_real_imagenet(name):
    # scikit-image ships these photos. ImageNet classes 281-285 are domestic cats; 967 espresso.
    cat = _classify(name, data.chelsea())
    assert int(cat.argmax()) in {281, 282, 283, 284, 285}
    assert float(cat[281:286].sum()) > 0.5
    assert int(_classify(name, data.coffee()).argmax()) in {967, 968}  # espresso / cup


def test_b_variants_have_no_offline_imagenet_weights():
    with pytest.raises(WeightsNotFoundError, match="efficientnet-lite0/1/2"):
        create_backbone("efficientnet-b0", "imagenet")


def test_checkpoint_round_trip_is_safetensors(tmp_path):
    torch.manual_seed(1)
    a = create_backbone("efficientnet-b0", num_classes=3)
    path = tmp_path / "b0.safetensors"
    save_checkpoint(a, path)
    b = create_backbone("efficientnet-b0", path, num_classes=3)
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(v, w), k
    with pytest.raises(WeightsNotFoundError, match="not found"):
        create_backbone("efficientnet-b0", tmp_path / "missing.safetensors")
    (tmp_path / "x.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="safetensors"):
        create_backbone("efficientnet-b0", tmp_path / "x.pth")  # pickle is never loaded


def test_ensemble_concat_dense_selu():
    torch.manual_seed(0)
    members = [create_backbone("efficientnet-lite0") for _ in range(2)]
    net = EnsembleFeatureNet(members, feature_dim=1024, head_outputs=1).eval()
    with torch.no_grad():
        out = net(torch.randn(3, 3, 64, 64))
    assert out.feature.shape == (3, 1024)
    assert out.logits.shape == (3, 1)
    assert len(out.member_taps) == 2 and all(len(t) == 7 for t in out.member_taps)
    # SELU's lower bound is -scale*alpha
    assert float(out.feature.min()) >= -1.0507 * 1.6733 - 1e-4
    assert net.dense.in_features == 2 * 1280
