"""Presets (`--preset default|paper`), device selection and the dry-run resource estimate."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from dermsearch.cli.main import main
from dermsearch.errors import ConfigError
from dermsearch.extract.config import ExtractorConfig
from dermsearch.index import Index
from dermsearch.models.device import resolve_device
from dermsearch.models.ensemble import read_ensemble_spec
from dermsearch.presets import PRESETS, changed, get_preset
from dermsearch.train.config import ClassifierTrainConfig, SegTrainConfig

from .conftest import SHARED, require_data
from .test_classifier import _synthetic_set

HAM = SHARED / "ham10000"


def test_paper_preset_resolves_to_the_papers_configuration():
    p = get_preset("paper")
    c = p.classifier
    assert (c.backbone, c.members, c.image_size, c.augment, c.trainable_stages, c.target) == (
        "efficientnet-b6", 5, 384, "x7", 7, "melanoma")
    assert c.shared_stages == 0     # whole members trained, as in the paper
    assert (p.segmenter.arch, p.segmenter.image_size) == ("r2unet", 384)
    assert set(p.requires) == {"weights", "segmenter"}
    assert p.index.gram_pool == "image" and p.index.gram_norm == "none"
    with pytest.raises(ConfigError, match="needs the settings weights and segmenter"):
        p.index_settings({})
    settings = p.index_settings({"weights": "w.safetensors", "segmenter": "s.safetensors", "gram_norm": "l2"})
    assert settings["gram_pool"] == "image" and settings["gram_norm"] == "l2"      # given wins over the preset


def test_default_preset_is_what_the_configs_default_to():
    p = get_preset("default")
    assert p.classifier == ClassifierTrainConfig() and p.segmenter == SegTrainConfig()
    assert p.index == ExtractorConfig() and p.requires == ()
    assert (SegTrainConfig().arch, SegTrainConfig().epochs) == ("unet", 50)   # what ships
    assert changed(p.classifier) == {} and p.index_settings({"tta": 2}) == {"tta": 2}
    assert changed(replace(p.classifier, labels="x.csv", epochs=9)) == {"labels": "x.csv", "epochs": 9}
    with pytest.raises(KeyError, match="valid presets: default, paper"):
        get_preset("huge")


def test_training_without_labels_is_refused_and_presets_import_no_network_library():
    import subprocess
    import sys

    from dermsearch.train.classifier import train_classifier

    with pytest.raises(ConfigError, match="labels CSV"):
        train_classifier(ClassifierTrainConfig(), "/nonexistent/run")
    code = ("import sys, dermsearch.presets, dermsearch.train.config; "
            "print(sorted(m for m in ('torch', 'kornia', 'monai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_presets_command_lists_both(capsys):
    assert main(["presets", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == set(PRESETS)
    assert out["paper"]["train classifier"]["backbone"] == "efficientnet-b6"
    assert out["paper"]["train segmenter"]["arch"] == "r2unet"


def test_device_auto_falls_back_to_cpu_and_cuda_fails_cleanly(image_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda:0")
    rc = main(["index", str(image_folder), "--index", str(tmp_path / "ix"), "--weights", "random",
               "--image-size", "64", "--device", "cuda", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "no CUDA device" in err and "Traceback" not in err
    for bad in ("gpu", "cuda:x", "meta"):   # not a device, or none this tool runs on: a clear refusal too
        with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    rc = main(["index", str(image_folder), "--index", str(tmp_path / "ix"), "--weights", "random", "--device", "gpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "'gpu'" in err and "Traceback" not in err
    assert main(["index", str(image_folder), "--index", str(tmp_path / "ix"), "--weights", "random",
                 "--image-size", "64", "--mask-size", "32", "--device", "auto", "--backend", "torch", "-q"]) == 0


@pytest.mark.slow
def test_dry_run_measures_real_steps_and_explicit_flags_override_the_preset(tmp_path, capsys):
    labels = _synthetic_set(tmp_path / "data")
    rc = main(["train", "classifier", "--preset", "paper", "--labels", str(labels), "--out", str(tmp_path / "run"),
               "--members", "2", "--image-size", "32", "--batch-size", "2", "--dry-run", "--dry-run-steps", "1"])
    assert rc == 0
    est = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "2 x efficientnet-b6" in est["what"] and est["image_size"] == 32 and est["batch_size"] == 2
    assert est["seconds_per_batch"] > 0 and est["estimated_seconds"] > 0
    # whole B6 members: every parameter trained; 2 members' worth of parameters
    assert est["trainable"] > 30e6 and est["parameters"] > 2 * est["trainable"] * 0.9
    assert est["batches"] == 12 * 10 * 2      # ceil(24 / 2) batches x 10 epochs (preset) x 2 members
    assert not (tmp_path / "run" / "ensemble.safetensors").exists()


def test_dry_run_counts_the_real_classes_proxies_and_runs_in_bf16(tmp_path, capsys):
    labels = _synthetic_set(tmp_path / "data")         # 3 diagnoses: mel, nv, bkl
    small = ["--labels", str(labels), "--out", str(tmp_path / "run"), "--members", "2", "--image-size", "32",
             "--batch-size", "4", "--dry-run", "--dry-run-steps", "1"]
    trained = {}
    for loss in ("none", "proxy-anchor"):
        assert main(["train", "classifier", *small, "--member-metric-loss", loss, "--precision", "bf16"]) == 0
        est = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert est["precision"] == "bf16"
        trained[loss] = est["trainable"]
    assert trained["proxy-anchor"] - trained["none"] == 3 * 1280     # one proxy per diagnosis, Lite0's pooled dim
    # the estimate covers the whole run: phase one, the frozen stages, validation and phase two's pooled vectors
    assert set(est["parts"]) == {"phase one", "frozen stages", "validation", "phase two"}
    assert all(v > 0 for v in est["parts"].values())
    assert est["estimated_seconds"] == pytest.approx(sum(est["parts"].values()))
    assert est["parts"]["phase one"] == pytest.approx(est["seconds_per_batch"] * est["batches"])
    assert main(["train", "classifier", *small]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["precision"] == "fp32"   # auto on the CPU
    assert main(["train", "classifier", *small, "--label-column", "grade"]) == 2
    assert "no 'grade' column" in capsys.readouterr().err
    assert main(["train", "segmenter", "--labels", str(labels), "--out", str(tmp_path / "seg"), "--image-size", "32",
                 "--width", "4", "--batch-size", "2", "--precision", "bf16", "--dry-run", "--dry-run-steps", "1"]) == 0
    est = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert est["precision"] == "bf16"
    assert est["seconds_per_batch"] > 0 and est["batches"] == 12 * 50     # ceil(24 / 2) x the preset's 50 epochs
    assert not (tmp_path / "run" / "ensemble.safetensors").exists()
    assert not (tmp_path / "seg" / "best.safetensors").exists()


@pytest.mark.slow
def test_tiny_paper_preset_trains_and_indexes_end_to_end(tmp_path, capsys):
    require_data(HAM / "labels.csv")
    labels = _synthetic_set(tmp_path / "data", n_train=8, n_val=4)
    small = ["--image-size", "32", "--members", "2", "--epochs", "1", "--head-epochs", "1", "--batch-size", "4",
             "--quiet"]
    assert main(["train", "classifier", "--preset", "paper", "--labels", str(labels),
                 "--out", str(tmp_path / "clf"), *small]) == 0
    spec = read_ensemble_spec(tmp_path / "clf" / "ensemble.safetensors")
    assert (spec.backbone, spec.shared_stages, spec.members, spec.image_size) == ("efficientnet-b6", 0, 2, 32)
    assert main(["train", "segmenter", "--preset", "paper", "--labels", str(HAM / "labels.csv"),
                 "--split", str(HAM / "split.csv"), "--out", str(tmp_path / "seg"), "--image-size", "32",
                 "--width", "4", "--epochs", "1", "--limit", "8", "--quiet"]) == 0
    capsys.readouterr()
    # the paper preset refuses to index without the trained files ...
    assert main(["index", str(labels), "--index", str(tmp_path / "ix"), "--preset", "paper", "-q"]) == 2
    assert "needs --weights and --segmenter" in capsys.readouterr().err
    # ... and indexes with them
    assert main(["index", str(labels), "--index", str(tmp_path / "ix"), "--preset", "paper", "-q",
                 "--weights", str(tmp_path / "clf" / "ensemble.safetensors"),
                 "--segmenter", str(tmp_path / "seg" / "best.safetensors")]) == 0
    ix = Index.open(tmp_path / "ix")
    assert len(ix) == 12 and ix.extractor_config.backbone == "efficientnet-b6"
    assert ix.manifest["feature_dim"] == 1024


def test_one_ensemble_description_for_the_file_the_extractor_and_the_trainer():
    from dermsearch.models.description import EnsembleDescription
    from dermsearch.models.ensemble import default_ensemble_path

    shipped = read_ensemble_spec(default_ensemble_path()).description()
    # the packaged file, the default extractor, the extractor read from the file and the default
    # training run describe the same ensemble (the defaults are what ships)
    assert shipped == ExtractorConfig().description() == ExtractorConfig.for_weights("default").description()
    assert ClassifierTrainConfig().description() == shipped
    assert get_preset("paper").classifier.description().differences(shipped) == {
        "backbone": ("efficientnet-b6", "efficientnet-lite0"), "image_size": (384, 224),
        "normalization": ("imagenet", "tf"), "colour": ("none", "shades-of-gray")}
    assert EnsembleDescription.of("efficientnet-b0", 1, 8, 32).normalization == "imagenet"


def test_colour_strength_scales_the_colour_augmentation():
    from dermsearch.cli.cmd_train import _config
    from dermsearch.cli.main import build_parser
    from dermsearch.presets import get_preset

    base = get_preset("default").classifier
    args = build_parser().parse_args(["train", "classifier", "--labels", __file__, "--out", "run",
                                      "--colour-strength", "2"])
    a = _config(args, base).augment_config
    b = base.augment_config
    assert (a.brightness, a.contrast, a.saturation, a.hue) == (2 * b.brightness, 2 * b.contrast,
                                                               2 * b.saturation, 2 * b.hue)
    assert (a.p_flip, a.p_gridmask, a.grid_d) == (b.p_flip, b.p_gridmask, b.grid_d)
    plain = build_parser().parse_args(["train", "classifier", "--labels", __file__, "--out", "run"])
    assert _config(plain, base).augment_config == b
    bad = build_parser().parse_args(["train", "classifier", "--labels", __file__, "--out", "run",
                                     "--colour-strength", "-1"])
    with pytest.raises(ConfigError, match="colour-strength"):
        _config(bad, base)


def test_the_packaged_ensemble_was_trained_with_the_default_config():
    """The dataclass defaults are what ships: the training config recorded in the packaged file is
    the default one, except where the data lives (a setting added since it was trained must be absent at
    its neutral value)."""
    from dermsearch.models.ensemble import default_ensemble_path
    from dermsearch.train.config import NEUTRAL_SETTINGS

    recorded = read_ensemble_spec(default_ensemble_path()).train
    default = ClassifierTrainConfig().to_dict()
    where = {"labels", "split", "limit"}
    differ = {k: (recorded.get(k), v) for k, v in default.items()
              if k not in where and recorded.get(k, NEUTRAL_SETTINGS.get(k)) != v}
    assert not differ, f"the packaged ensemble was trained with non-default settings: {differ}"


def test_balanced_sampling_is_the_default_and_can_be_turned_off():
    from dermsearch.cli.cmd_train import _config
    from dermsearch.cli.main import build_parser

    base = get_preset("default").classifier
    assert base.balanced and not get_preset("paper").classifier.balanced    # the paper sampled the natural mix
    parse = build_parser().parse_args
    assert _config(parse(["train", "classifier", "--labels", __file__, "--out", "run"]), base).balanced
    assert not _config(parse(["train", "classifier", "--labels", __file__, "--out", "run", "--no-balanced"]),
                       base).balanced
    paper = get_preset("paper").classifier
    assert _config(parse(["train", "classifier", "--labels", __file__, "--out", "run", "--balanced"]), paper).balanced
