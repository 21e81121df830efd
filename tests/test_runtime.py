"""The runtime object: where and how work runs, never what it computes."""

import numpy as np
import pytest

from dermsearch.cli.main import build_parser
from dermsearch.cli.options import runtime_of
from dermsearch.errors import ConfigError
from dermsearch.runtime import Runtime

from .conftest import TINY, TORCH, lesion_image


def test_runtime_checks_its_fields_and_names_the_valid_choices():
    assert Runtime() == Runtime(device="auto", threads=None, backend="auto", batch_size=16, decode_threads=2)
    with pytest.raises(ConfigError, match="torch, onnx, auto"):
        Runtime(backend="tensorrt")
    with pytest.raises(ConfigError, match="auto, fp32, bf16"):
        Runtime(precision="fp16")
    for bad in ({"threads": 0}, {"batch_size": 0}, {"decode_threads": 0}, {"device": ""}):
        with pytest.raises(ConfigError):
            Runtime(**bad)


def test_workers_run_on_the_cpu_unless_a_device_is_named():
    assert Runtime().on_workers().device == "cpu"
    assert Runtime(device="cuda:1", threads=3).on_workers() == Runtime(device="cuda:1", threads=3)


def test_the_runtime_changes_no_vector_and_no_fingerprint(tiny_extractor):
    from dermsearch.extract import Extractor

    other = Extractor(TINY, Runtime(device="cpu", threads=1, backend="torch", batch_size=3))
    assert other.fingerprint == tiny_extractor.fingerprint
    assert other.runtime.threads == 1 and tiny_extractor.runtime == TORCH
    images = [lesion_image(s) for s in (1, 2)]
    a, b = other.extract(images), tiny_extractor.extract(images)
    np.testing.assert_allclose(a.features, b.features, rtol=0, atol=1e-6)
    assert np.array_equal(a.masks, b.masks)


def test_every_runtime_command_spells_device_and_threads_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)            # the paths below exist (the CLI checks them while parsing)
    for folder in ("ix", "src"):
        (tmp_path / folder).mkdir()
    for name in ("q.jpg", "l.csv"):
        (tmp_path / name).write_bytes(b"x")
    parser = build_parser()
    for argv in (["search", "ix", "q.jpg"], ["index", "src", "--index", "ix"], ["evaluate", "ix"],
                 ["serve", "ix"], ["train", "classifier", "--labels", "l.csv", "--out", "o"]):
        args = parser.parse_args([*argv, "--device", "cpu", "--threads", "2"])
        assert runtime_of(args) == Runtime(device="cpu", threads=2), argv
    args = parser.parse_args(["search", "ix", "q.jpg"])
    assert runtime_of(args) == Runtime()                  # the one default policy
    for what in ("classifier", "segmenter"):               # training alone takes a precision
        args = parser.parse_args(["train", what, "--labels", "l.csv", "--out", "o", "--precision", "bf16"])
        assert args.precision == "bf16"
        assert parser.parse_args(["train", what, "--labels", "l.csv", "--out", "o"]).precision == "auto"
