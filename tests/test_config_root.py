"""The config root (dermsearch.config): every field declared once, with help, choices from
names.py and ranges checked by one generic check; the CLI's flags generated from the fields, so a
flag's default, choices and type cannot drift from the field's; every flag spelling of before the
config root still parses."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from dermsearch import names
from dermsearch.cli.main import build_parser, main
from dermsearch.config import (
    CONFIG_CLASSES,
    BuildConfig,
    ClassifierTrainConfig,
    EvaluationConfig,
    ExtractorConfig,
    FastConfig,
    Runtime,
    SegTrainConfig,
    WebConfig,
    choices_of,
    default_of,
)
from dermsearch.errors import ConfigError, DermsearchError

OPTION_STRINGS = Path(__file__).parent / "data" / "cli_option_strings.json"
NAME_TUPLES = {v: k for k, v in vars(names).items() if k.isupper() and isinstance(v, tuple)}


def _parsers(parser=None, path=()):
    """Every (sub)command parser of the CLI, by its words."""
    parser = parser or build_parser()
    if path:
        yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def _config_actions():
    for command, parser in _parsers():
        for action in parser._actions:
            if hasattr(action, "config_field"):
                yield command, action


def test_every_config_field_has_help():
    missing = [f"{cls.__name__}.{f.name}" for cls in CONFIG_CLASSES for f in dataclasses.fields(cls)
               if len(f.metadata.get("help", "")) < 5]
    assert not missing, missing


def test_every_choice_field_takes_a_names_tuple_and_its_literal_type_says_the_same():
    seen = 0
    for cls in CONFIG_CLASSES:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            choices = choices_of(cls, f.name)
            if choices is None:
                continue
            seen += 1
            assert choices in NAME_TUPLES, f"{cls.__name__}.{f.name}: {choices} is not a tuple of names.py"
            hint = hints[f.name]
            literal = next(a for a in (hint, *typing.get_args(hint)) if typing.get_origin(a) is typing.Literal)
            allowed = (*f.metadata["also"], *choices)
            assert set(typing.get_args(literal)) == set(allowed) - {None}, f"{cls.__name__}.{f.name}"
            assert default_of(cls, f.name) in allowed
    assert seen >= 20
    assert choices_of(ExtractorConfig, "gram_pool") is names.GRAM_POOLS
    assert choices_of(ClassifierTrainConfig, "diversity") is names.DIVERSITY
    assert choices_of(EvaluationConfig, "ci_unit") is names.CI_UNITS


@pytest.mark.parametrize("cls, field, bad", [
    (ExtractorConfig, "gram_pool", "nope"), (ExtractorConfig, "tta", 3), (ExtractorConfig, "gram_margin", 0.9),
    (ExtractorConfig, "mask_size", 12), (ClassifierTrainConfig, "head_select", "loss"),
    (ClassifierTrainConfig, "stage_lr_decay", 0.0), (ClassifierTrainConfig, "trainable_stages", 8),
    (SegTrainConfig, "arch", "vnet"), (SegTrainConfig, "depth", 0), (EvaluationConfig, "exclude_same", "site"),
    (EvaluationConfig, "bootstrap", -1), (FastConfig, "sketch_dims", -1), (FastConfig, "wide_rows", 0),
    (WebConfig, "auth", "maybe"), (WebConfig, "rate_limit", -1), (Runtime, "precision", "fp8"),
    (Runtime, "threads", 0), (BuildConfig, "commit_every", 0)])
def test_a_bad_value_is_a_config_error_naming_the_field(cls, field, bad):
    with pytest.raises(ConfigError, match=f"^{field} must be") as e:
        cls(**{field: bad})
    assert isinstance(e.value, DermsearchError) and repr(bad).strip("'") in str(e.value)


def test_the_checks_that_relate_fields_still_hold():
    with pytest.raises(ConfigError, match="pooled feature uses exactly one backbone"):
        ExtractorConfig(weights="imagenet", feature="pooled", members=2)
    with pytest.raises(ConfigError, match="snapshot_epochs applies"):
        ClassifierTrainConfig(snapshot_epochs=2)
    with pytest.raises(ConfigError, match="needs masks"):
        ExtractorConfig(masks=False)
    assert ExtractorConfig(tta=4).tta == 4 and EvaluationConfig(exclude_same=None).exclude_same is None


def test_generated_flags_default_to_the_fields_and_take_their_choices_and_types():
    checked = 0
    for command, action in _config_actions():
        cls, name = action.config_field
        default = default_of(cls, name)
        where = f"{command} {action.option_strings[0]} ({cls.__name__}.{name})"
        assert action.dest == name, where
        if action.default is not None or default is None:     # a flag that falls back on a preset is None
            assert action.default == default, where
        else:
            shown = f"(default {_shown(default)})" in action.help or "default:" in action.help
            assert shown or action.option_strings[0].startswith("--no-") or default == "", where
        if choices_of(cls, name):
            assert set(action.choices) == set(cls.__dataclass_fields__[name].metadata["also"]
                                              + choices_of(cls, name)) - {None}, where
        checked += 1
    assert checked >= 70
    # the disagreements the config root removed: one default each, read by the CLI
    ns = build_parser().parse_args(["serve", str(Path.cwd())])
    assert ns.rate_limit == WebConfig().rate_limit == 120
    ns = build_parser().parse_args(["index", str(Path.cwd()), "--index", "ix"])
    assert (ns.batch_size, ns.commit_every, ns.dask_chunk) == (16, 128, 64) == \
        (Runtime().batch_size, BuildConfig().commit_every, BuildConfig().dask_chunk)
    ns = build_parser().parse_args(["evaluate", str(Path.cwd())])
    assert (ns.k, ns.vote_k, ns.bootstrap) == (EvaluationConfig().k, EvaluationConfig().vote_k,
                                               EvaluationConfig().bootstrap)


def _shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def test_optimize_sets_every_fast_mode_field():
    flags = {a.dest for c, a in _config_actions() if c == "optimize"}
    assert flags == {f.name for f in dataclasses.fields(FastConfig)}
    ns = build_parser().parse_args(["optimize", str(Path.cwd()), "--wide-rows", "64", "--fit-rows", "500",
                                    "--normaliser-candidates", "4", "--seed", "3"])
    assert (ns.wide_rows, ns.fit_rows, ns.normaliser_candidates, ns.seed) == (64, 500, 4, 3)
    assert main(["optimize", str(Path.cwd()), "--wide-rows", "0"]) == 2      # refused while parsing


def test_flags_that_fall_back_on_the_preset_are_none_unless_given():
    parse = build_parser().parse_args
    base = ["train", "segmenter", "--labels", __file__, "--out", "run"]
    ns = parse(base)
    assert all(getattr(ns, n) is None for n in ("arch", "epochs", "augment", "limit", "image_size"))
    ns = parse([*base, "--no-augment", "--arch", "r2unet", "--limit", "0"])
    assert (ns.augment, ns.arch, ns.limit) == (False, "r2unet", 0)
    from dermsearch.cli.cmd_train import _config
    from dermsearch.presets import get_preset

    paper = get_preset("paper").segmenter          # flags given replace the preset's values, the rest stay
    cfg = _config(parse([*base, "--no-augment", "--depth", "3"]), paper)
    assert (cfg.augment, cfg.depth, cfg.arch, cfg.width, cfg.image_size) == (False, 3, "r2unet", 32, 384)
    ns = parse(["train", "classifier", "--labels", __file__, "--out", "run", "--no-balanced", "--class-weights"])
    assert (ns.balanced, ns.class_weights, ns.tta, ns.members) == (False, True, None, None)
    ns = parse(["index", str(Path.cwd()), "--index", "ix", "--no-style", "--gram-margin", "0.1"])
    assert (ns.style, ns.masks, ns.gram_margin, ns.weights) == (False, None, 0.1, None)


def test_presets_are_instances_of_the_root_classes():
    from dermsearch.presets import PRESETS

    for preset in PRESETS.values():
        assert isinstance(preset.classifier, ClassifierTrainConfig) and isinstance(preset.segmenter, SegTrainConfig)
        assert isinstance(preset.index, ExtractorConfig)
    from dermsearch.extract.config import ExtractorConfig as Old
    from dermsearch.runtime import Runtime as OldRuntime
    from dermsearch.search.config import FastConfig as OldFast

    assert (Old, OldRuntime, OldFast) == (ExtractorConfig, Runtime, FastConfig)     # the old homes re-export


def test_every_option_string_of_before_the_config_root_still_exists():
    before = json.loads(OPTION_STRINGS.read_text())
    now = {command: {s for a in parser._actions for s in a.option_strings} for command, parser in _parsers()}
    for command, options in before.items():
        assert command in now, command
        lost = set(options) - now[command]
        assert not lost, f"{command}: {sorted(lost)}"


def test_help_lists_the_same_flags_and_builds_without_a_network_library():
    code = ("import sys; from dermsearch.cli.main import main; rc = main(['serve', '--help']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'torch', 'lancedb')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.rstrip().endswith("[]")
    before = json.loads(OPTION_STRINGS.read_text())["serve"]
    assert all(flag in out for flag in before)


def test_certified_modes_max_checked_is_a_flag_of_search_and_serve_and_reaches_the_engine(tiny_extractor, tmp_path):
    from dermsearch.config import SearchConfig
    from dermsearch.search import Searcher

    from .conftest import indexed_archive

    parse = build_parser().parse_args
    (tmp_path / "q.jpg").write_bytes(b"")
    for cmd in (["search", str(Path.cwd()), str(tmp_path / "q.jpg")], ["serve", str(Path.cwd())]):
        assert parse(cmd).max_checked == SearchConfig().max_checked == 0.02
        assert parse([*cmd, "--mode", "certified", "--max-checked", "0.1"]).max_checked == 0.1
    with pytest.raises(ConfigError, match="max_checked"):
        Searcher(tmp_path / "nowhere", max_checked=1.5)           # checked before the index is opened
    ix = indexed_archive(tmp_path, [{"image_id": f"m{i}", "diagnosis": "nv"} for i in range(4)], tiny_extractor)
    searcher = Searcher(ix, extractor=tiny_extractor, mode="certified", max_checked=0.5)
    assert searcher.engine_for("certified").max_checked == 0.5
    assert Searcher(ix, extractor=tiny_extractor).engine_for("certified").max_checked == 0.02
