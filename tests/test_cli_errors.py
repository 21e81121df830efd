"""The CLI's error contract, swept over every subcommand: each user-fixable mistake (a missing
file or folder, a file where a folder belongs and the reverse, an output whose folder does not
exist, a number out of range, an unknown name, a filter the index cannot satisfy) ends in ONE
line, ``dermsearch COMMAND: error: ...`` naming the thing, and exit 2; never a traceback, never
another code. In-process (``cli.main.main`` with argv), so the sweep takes seconds."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest

from dermsearch.cli.main import build_parser, main

from .conftest import indexed_archive, lesion_image
from .test_docs import _command_names


@pytest.fixture(scope="module")
def paths(tmp_path_factory, tiny_extractor):
    root = tmp_path_factory.mktemp("bad")
    rows = [{"image_id": f"im{i}", "diagnosis": "melanoma" if i % 2 else "nevus", "age_approx": 30 + 5 * i}
            for i in range(6)]
    ix = indexed_archive(root, rows, tiny_extractor)
    (root / "split.csv").write_text("image_id,split\n" + "".join(f"im{i},{'val' if i < 2 else 'train'}\n"
                                                                 for i in range(6)))
    (root / "notes.txt").write_text("not an image, not a CSV of labels\n")
    (root / "bad.safetensors").write_text("not a safetensors file\n")
    (root / "ratings.csv").write_text("query_id,item,similar\nq1,a,1\n")
    (root / "adir").mkdir()
    (root / "notix").mkdir()
    (root / "noimages").mkdir()
    (root / "noimages" / "readme.txt").write_text("no image here\n")
    lesion_image(7).save(root / "q.png")
    p = {"ix": ix, "labels": root / "labels.csv", "split": root / "split.csv", "img": root / "q.png",
         "file": root / "notes.txt", "dir": root / "adir", "notix": root / "notix", "missing": root / "nope",
         "out": root / "out", "root": root, "noimages": root / "noimages", "emptyix": root / "emptyix",
         "ratings": root / "ratings.csv"}
    from dermsearch.index.build import build_index

    (root / "none.csv").write_text("image_id,image_path,diagnosis\n")      # a labels CSV of no row
    build_index(root / "none.csv", root / "emptyix", extractor=tiny_extractor)     # an index of no image
    return {k: str(v) for k, v in p.items()}


def cases(p: dict) -> list[tuple[str, list[str], str]]:
    """(command, argv, a piece of the one-line message)."""
    ix, img, labels, split, f, d, notix, miss, out = (p[k] for k in ("ix", "img", "labels", "split", "file", "dir",
                                                                      "notix", "missing", "out"))
    ev = ["evaluate", ix, "--quiet"]
    srch = ["search", ix, img]
    tr_seg = ["train", "segmenter", "--labels", labels, "--out", out]
    tr_cls = ["train", "classifier", "--labels", labels, "--out", out]
    return [
        ("index", ["index", miss, "--index", out], "no such file or folder"),
        ("index", ["index", labels, "--index", f], "is a file, not a folder"),
        ("index", ["index", labels, "--index", f"{f}/sub"], "is a file, not a folder"),
        ("index", ["index", labels, "--index", out, "--batch-size", "0"], "at least 1"),
        ("index", ["index", labels, "--index", out, "--commit-every", "-3"], "at least 1"),
        ("index", ["index", labels, "--index", out, "--dask-chunk", "0"], "at least 1"),
        ("index", ["index", labels, "--index", out, "--image-size", "x"], "not a whole number"),
        ("index", ["index", labels, "--index", out, "--backend", "tensorrt"], "invalid choice"),
        ("index", ["index", labels, "--index", out, "--gram-pool", "everything"], "invalid choice"),
        ("index", ["index", labels, "--index", out, "--preset", "nope"], "invalid choice"),
        ("index", ["index", "--index", out], "needs a SOURCE"),
        ("index", ["index", "--index", notix, "--check"], "notix"),
        ("index", ["index", "--index", notix, "--remove", "im1"], "notix"),
        # found by the work, not the parser: still one line (progress bars included)
        ("index", ["index", f, "--index", out], "labels .csv"),
        ("index", ["index", labels, "--index", out, "--segmenter", "nope"], "unknown segmenter"),
        ("index", ["index", labels, "--index", out, "--mask-size", "100"], "multiple of 8"),
        ("index", ["index", labels, "--index", out, "--weights", f"{miss}.safetensors"], "not found"),
        ("index", ["index", labels, "--index", out, "--weights", "random", "--gram-weights", f"{miss}.json"],
         "cannot read gram weights"),
        ("optimize", ["optimize", ix, "--style-dims", "0"], "--style-dims: must be at least 1"),
        ("search", [*srch, "--mode", "fast"], "dermsearch optimize"),
        ("evaluate", ["evaluate", ix, "--split", split, "--query-split", "test"], "no queries"),
        ("evaluate", ["evaluate", ix, "--queries", f], "missing column"),
        ("evaluate", ["evaluate", ix, "--split", f], "split CSV needs"),
        ("fit-gram-weights", ["fit-gram-weights", ix, "--split", split, "--query-split", "test", "--out",
                              f"{out}.json"], "no labelled rows"),
        ("fit-metadata-head", ["fit-metadata-head", ix, "--split", split, "--out", f"{out}.json"],
         "no trained classification head"),
        ("fit-metadata-head", ["fit-metadata-head", ix, "--split", split, "--fit-split", "val", "--out",
                               f"{out}.json"], "would both fit"),
        ("eval-classifier", ["eval-classifier", f"{miss}.safetensors", "--labels", labels], "not found"),
        ("eval-segmenter", ["eval-segmenter", "--labels", labels], "no image/mask pairs"),
        ("train classifier", [*tr_cls, "--label-column", "nope", "--dry-run"], "no 'nope' column"),
        ("optimize", ["optimize", miss], "no such folder"),
        ("optimize", ["optimize", f], "is a file, not a folder"),
        ("optimize", ["optimize", notix], "notix"),
        ("compact", ["compact", miss], "no such folder"),
        ("compact", ["compact", notix], "notix"),
        ("export-onnx", ["export-onnx", miss, "--out", out], "no such folder"),
        ("export-onnx", ["export-onnx", ix, "--out", f], "is a file, not a folder"),
        ("export-onnx", ["export-onnx", notix, "--out", out], "notix"),
        # a folder of other files is refused, never emptied (the export replaces the whole folder)
        ("export-onnx", ["export-onnx", ix, "--out", p["root"]], "not an earlier export"),
        ("export-onnx", ["export-onnx", ix, "--out", "."], "not an earlier export"),
        ("info", ["info", miss], "no such folder"),
        ("info", ["info", f], "is a file, not a folder"),
        ("info", ["info", notix], "notix"),
        ("backbones", ["backbones", "extra"], "unrecognized arguments"),
        ("calibrate", ["calibrate", "--forse"], "unrecognized arguments"),
        ("presets", ["presets", "paper"], "unrecognized arguments"),
        ("search", ["search", ix, f"{miss}.jpg"], "no such file"),
        ("search", ["search", ix, d], "is a folder, not a file"),
        ("search", ["search", ix, f], "not a recognised image"),
        ("search", ["search", miss, img], "no such folder"),
        ("search", ["search", f, img], "is a file, not a folder"),
        ("search", ["search", notix, img], "notix"),
        ("search", [*srch, "-k", "-1"], "at least 0"),
        ("search", [*srch, "--measure", "nope"], "invalid choice"),
        ("search", [*srch, "--mode", "quick"], "invalid choice"),
        ("search", [*srch, "--threads", "0"], "at least 1"),
        ("search", [*srch, "--html", f"{miss}/x.html"], "does not exist"),
        ("search", [*srch, "--html", d], "is a folder, not a file"),
        ("search", [*srch, "--where", "nosuchcol=x"], "age_approx, diagnosis"),
        ("search", [*srch, "--range", "age=30:60"], "no such column"),
        ("search", [*srch, "--where", "diagnosis=mel,nv"], "melanoma, nevus"),
        ("search", [*srch, "--range", "age_approx=90:99"], "spans 30..55"),
        ("search", [*srch, "--range", "age_approx=old"], "COL=LO:HI"),
        ("search", [*srch, "--where", "diagnosis"], "COL=V1,V2"),
        ("evaluate", [*ev, "-k", "0"], "at least 1"),
        ("evaluate", [*ev, "--bootstrap", "0"], "at least 1"),
        ("evaluate", [*ev, "--vote-k", "0"], "at least 1"),
        ("evaluate", [*ev, "--rating-queries", "0"], "at least 1"),
        ("evaluate", [*ev, "--split", miss], "no such file"),
        ("evaluate", [*ev, "--split", d], "is a folder, not a file"),
        ("evaluate", [*ev, "--queries", miss], "no such file"),
        ("evaluate", [*ev, "--out", f], "is a file, not a folder"),
        ("evaluate", [*ev, "--rating-sheet", f], "is a file, not a folder"),
        ("evaluate", [*ev, "--compare", miss], "no such folder"),
        ("evaluate", [*ev, "--compare", f], "is a file, not a folder"),
        ("evaluate", [*ev, "--ci-unit", "patient"], "invalid choice"),
        ("evaluate", [*ev, "--headline", "best"], "invalid choice"),
        ("evaluate", [*ev, "--ratings", f], "--rating-key"),
        ("evaluate", [*ev, "--ratings", f, "--rating-key", miss], "no such file"),
        ("evaluate", [*ev, "--query-split", "val"], "need --split"),
        ("evaluate", [*ev, "--choose-on", "val"], "needs --split"),
        ("evaluate", [*ev, "--diagnosis-map", "mel"], "A=B,C=D"),
        ("evaluate", ["evaluate", notix], "notix"),
        ("fit-gram-weights", ["fit-gram-weights", ix, "--split", miss, "--out", f"{out}.json"], "no such file"),
        ("fit-gram-weights", ["fit-gram-weights", ix, "--split", split, "--out", f"{miss}/w.json"], "does not exist"),
        ("fit-gram-weights", ["fit-gram-weights", ix, "--split", split, "--out", d], "is a folder, not a file"),
        ("fit-gram-weights", ["fit-gram-weights", ix, "--split", split, "--out", f"{out}.json", "-k", "0"],
         "at least 1"),
        ("fit-metadata-head", ["fit-metadata-head", ix, "--split", miss, "--out", f"{out}.json"], "no such file"),
        ("fit-metadata-head", ["fit-metadata-head", ix, "--split", split, "--out", f"{miss}/h.json"], "does not exist"),
        ("fit-metadata-head", ["fit-metadata-head", ix, "--split", split, "--out", d], "is a folder, not a file"),
        ("fit-metadata-head", ["fit-metadata-head", ix, "--out", f"{out}.json"], "--split"),
        ("evaluate", [*ev, "--metadata-head", miss], "no such file"),
        ("evaluate", [*ev, "--metadata-head", f], "not a readable metadata head"),
        ("eval-classifier", ["eval-classifier", "--labels", miss], "no such file"),
        ("eval-classifier", ["eval-classifier", "--labels", d], "is a folder, not a file"),
        ("eval-classifier", ["eval-classifier", "--labels", labels, "--limit", "-1"], "at least 0"),
        ("eval-classifier", ["eval-classifier", "--labels", labels, "--split", miss], "no such file"),
        ("eval-segmenter", ["eval-segmenter", "--labels", miss], "no such file"),
        ("eval-segmenter", ["eval-segmenter", "--labels", labels, "--image-size", "0"], "at least 8"),
        ("eval-segmenter", ["eval-segmenter", "--labels", labels, "--split", d], "is a folder, not a file"),
        ("train segmenter", ["train", "segmenter", "--labels", miss, "--out", out], "no such file"),
        ("train segmenter", ["train", "segmenter", "--labels", labels, "--out", f], "is a file, not a folder"),
        ("train segmenter", [*tr_seg, "--epochs", "0"], "at least 1"),
        ("train segmenter", [*tr_seg, "--arch", "vnet"], "invalid choice"),
        ("train segmenter", [*tr_seg, "--preset", "huge"], "invalid choice"),
        ("train segmenter", [*tr_seg, "--split", miss], "no such file"),
        ("train classifier", ["train", "classifier", "--labels", d, "--out", out], "is a folder, not a file"),
        ("train classifier", [*tr_cls, "--members", "0"], "at least 1"),
        ("train classifier", [*tr_cls, "--batch-size", "0"], "at least 1"),
        ("train classifier", [*tr_cls, "--head-select", "loss"], "invalid choice"),
        ("train classifier", [*tr_cls, "--cache", f], "is a file, not a folder"),
        ("train classifier", [*tr_cls, "--precision", "fp8"], "invalid choice"),
        ("serve", ["serve", miss], "no such folder"),
        ("serve", ["serve", f], "is a file, not a folder"),
        ("serve", ["serve", ix, "--port", "http"], "is not a whole number"),
        ("serve", ["serve", ix, "--port", "70000"], "a port is 0..65535"),
        ("serve", ["serve", ix, "--concurrency", "0"], "at least 1"),
        ("serve", ["serve", ix, "--max-upload-mb", "0"], "must be above 0"),
        ("serve", ["serve", ix, "--split", miss], "no such file"),
        ("serve", ["serve", ix, "--query-split", "val"], "needs --split"),
        ("serve", ["serve", ix, "--host", "0.0.0.0", "--auth", "off"], "without authentication"),
        ("serve", ["serve", ix, "--auth", "maybe"], "invalid choice"),
        ("token create", ["token", "create", miss, "--name", "ana"], "no such folder"),
        ("token create", ["token", "create", notix, "--name", "ana"], "notix"),
        ("token create", ["token", "create", ix, "--name", "ana", "--role", "owner"], "invalid choice"),
        ("token revoke", ["token", "revoke", ix, "--name", "nobody"], "no active token"),
        ("token revoke", ["token", "revoke", f, "--name", "ana"], "is a file, not a folder"),
        ("token list", ["token", "list", miss], "no such folder"),
        ("token list", ["token", "list", notix], "notix"),
        ("export", ["export", miss, f"{out}.parquet"], "no such folder"),
        ("export", ["export", notix, f"{out}.parquet"], "notix"),
        ("export", ["export", ix, f"{miss}/x.parquet"], "does not exist"),
        ("export", ["export", ix, d], "is a folder"),
        ("(none)", ["nosuchcommand"], "invalid choice"),
        ("fit-gram-weights", ["fit-gram-weights", ix, "--split", split, "--out", f"{out}.json"], "fewer than k = 5"),
        ("search", [*srch, "--threads", "100000"], "at most 1024"),       # (it used to exhaust the memory)
        ("search", [*srch, "--device", "gpu"], "cuda or cuda:N, not 'gpu'"),
        ("index", ["index", labels, "--index", out, "--images", f], "is a file, not a folder"),
        ("index", ["index", labels, "--index", out, "--images", miss], "no such folder"),
        ("evaluate", [*ev, "--ratings", p["ratings"], "--rating-key", f], "a rating key needs columns"),
        ("evaluate", [*ev, "--split", split, "--candidate-split", "nosuch"], "no candidates: the candidate selection"),
        ("index", ["index", labels, "--index", out, "--device", "tpu:0"], "cuda or cuda:N, not 'tpu:0'"),
        ("index", ["index", labels, "--index", out, "--gram-margin", "0.9"], "--gram-margin: must be in [0, 0.5]"),
        ("index", ["index", labels, "--index", out, "--weights", f"{p['root']}/bad.safetensors"], "not a readable"),
        ("eval-classifier", ["eval-classifier", f"{p['root']}/bad.safetensors", "--labels", labels], "not a readable"),
        ("train classifier", ["train", "classifier", "--labels", f, "--out", out], "no column image_id"),
        # nothing to work on: an empty folder, an index of no image
        ("index", ["index", p["noimages"], "--index", f"{out}-e", "--weights", "random"], "no image files found"),
        ("search", ["search", p["emptyix"], img], "holds no images"),
        ("evaluate", ["evaluate", p["emptyix"], "--quiet"], "no queries: no image of"),
    ] + (unwritable(p) if UNWRITABLE.is_dir() else [])


# a folder no one may create files in, even root (the operating system answers ENOENT/EACCES): the
# command runs, then its write fails; that is one line naming the path, not a traceback
UNWRITABLE = Path("/proc")


def unwritable(p: dict) -> list[tuple[str, list[str], str]]:
    ix, img, labels, split = p["ix"], p["img"], p["labels"], p["split"]
    no = str(UNWRITABLE)
    said = "check the path, its permissions"
    return [
        ("index", ["index", labels, "--index", f"{no}/ix", "--weights", "random"], f"{no}/ix: "),
        ("search", ["search", ix, img, "--html", f"{no}/x.html"], f"{no}/x.html: "),
        ("evaluate", ["evaluate", ix, "--quiet", "--bootstrap", "2", "--out", f"{no}/report"], said),
        ("evaluate", ["evaluate", ix, "--quiet", "--bootstrap", "2", "--rating-sheet", f"{no}/sheet"], said),
        ("export", ["export", ix, f"{no}/x.parquet"], f"{no}/x.parquet: "),
        ("fit-gram-weights", ["fit-gram-weights", ix, "--split", split, "--out", f"{no}/w.json", "-k", "2"], said),
        ("export-onnx", ["export-onnx", ix, "--out", f"{no}/onnx"], f"{no}/onnx: "),
    ]


def test_every_mistake_is_one_line_and_exit_2(paths, capsys):
    failures = []
    all_cases = cases(paths)
    for command, argv, expected in all_cases:
        capsys.readouterr()
        try:
            code = main(argv)
        except BaseException as e:  # noqa: BLE001 - a traceback is exactly what the sweep looks for
            failures.append(f"{argv}: raised {type(e).__name__}: {e}")
            continue
        err = capsys.readouterr().err
        lines = err.splitlines()                          # exactly one line: no blank one either
        # named as the user typed it (argparse names the top level for arguments no command takes)
        prefix = (f"dermsearch {command}: error: " if command != "(none)" and "unrecognized" not in expected
                  else "dermsearch: error: ")
        if code != 2 or len(lines) != 1 or not lines[0].startswith(prefix) or expected not in lines[0]:
            failures.append(f"{argv}: exit {code}, stderr {err!r} (wanted one line with {expected!r})")
    assert not failures, "\n".join(failures)
    # every subcommand is swept, and with several kinds of mistake
    swept = {c for c, _, _ in all_cases}
    names = {n.removeprefix("dermsearch ") for n in _command_names(build_parser())}
    assert names <= swept, names - swept
    assert len(all_cases) >= 100, len(all_cases)


def test_an_oserror_is_one_line_only_on_a_path_the_user_gave():
    """An OSError on a path given on the command line, inside it or beside it (a write's temporary
    file) names that path; any other OSError is a bug and keeps its traceback (None here)."""
    from dermsearch.cli.main import user_path_error

    args = argparse.Namespace(index=Path("my-index"), out=Path("/srv/out/report.json"), k=5, where=["a=b"])
    gone = FileNotFoundError(2, "No such file or directory", "/srv/out/.report.json.tmp-12-ab")
    assert user_path_error(gone, args).startswith("/srv/out/report.json: No such file or directory; check")
    inside = PermissionError(13, "Permission denied", "my-index/features.npy")
    assert user_path_error(inside, args).startswith("my-index/features.npy: Permission denied")
    full = OSError(28, "No space left on device", "my-index")
    assert user_path_error(full, args).startswith("my-index: No space left on device")
    arrow = FileNotFoundError("Failed to open local file '/srv/out/.report.json.tmp-9-cd'. Detail: [errno 2] No "
                              "such file or directory")
    assert user_path_error(arrow, args).startswith("/srv/out/report.json: No such file or directory")
    assert user_path_error(FileNotFoundError(2, "No such file or directory", "/usr/lib/x.so"), args) is None
    assert user_path_error(OSError("something else"), args) is None
    assert user_path_error(FileNotFoundError(2, "No such file", "my-index-old/x"), args) is None


def test_export_onnx_never_empties_a_folder_of_other_files(paths, tiny_extractor, tmp_path, capsys):
    """An existing folder that is not an earlier export (say ``--out ~/Downloads``) is refused, by
    the CLI and by the library, and its files stay; an empty folder or a new one is fine."""
    from dermsearch.errors import ConfigError
    from dermsearch.extract.onnx import export_onnx

    folder = tmp_path / "Downloads"
    folder.mkdir()
    (folder / "thesis.pdf").write_bytes(b"precious")
    (folder / "sub").mkdir()
    (folder / "sub" / "photo.jpg").write_bytes(b"also precious")
    capsys.readouterr()
    assert main(["export-onnx", paths["ix"], "--out", str(folder)]) == 2
    assert "not an earlier export" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="not an earlier export"):
        export_onnx(tiny_extractor, folder)
    from dermsearch.cli.export import export_index
    from dermsearch.index import Index

    with pytest.raises(ConfigError, match="not an earlier export"):
        export_index(Index.open(paths["ix"]), folder)
    assert (folder / "thesis.pdf").read_bytes() == b"precious"
    assert (folder / "sub" / "photo.jpg").read_bytes() == b"also precious"
    assert sorted(p.name for p in folder.iterdir()) == ["sub", "thesis.pdf"]


def test_a_port_in_use_is_a_usage_error():
    from dermsearch.cli.common import UsageError, check_port_free

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(UsageError, match=f"--port {port}: the port is in use on 127.0.0.1"):
            check_port_free("127.0.0.1", port)
    check_port_free("127.0.0.1", port)              # free again: no error
    with pytest.raises(UsageError, match="not an address of this machine"):
        check_port_free("no-such-host.invalid", 8000)


def test_serve_on_a_port_in_use_is_one_line_and_exit_2(paths, capsys):
    """Before anything says "serving": the busy port is named, exit 2 (not uvicorn's exit 3)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        capsys.readouterr()
        code = main(["serve", paths["ix"], "--port", str(port), "--auth", "off"])
        err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and f"--port {port}: the port is in use" in lines[0], err
    assert "serving" not in err


def test_help_shows_every_default():
    """Each option with a default says it in --help, and CLI defaults come from the configs."""
    import argparse

    from dermsearch.evaluate.config import EvaluationConfig
    from dermsearch.runtime import Runtime

    missing = []

    def walk(parser, name):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    walk(sub, f"{name} {sub_name}")
            elif action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS):
                if "default" not in (action.help or ""):
                    missing.append(f"{name} {action.option_strings[0]}")
        return parser

    parser = walk(build_parser(), "dermsearch")
    assert not missing, missing
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    defaults = {a.dest: a.default for a in sub["evaluate"]._actions}
    d = EvaluationConfig()
    assert (defaults["k"], defaults["vote_k"], defaults["bootstrap"], defaults["ci_unit"]) == \
        (d.k, d.vote_k, d.bootstrap, d.ci_unit)
    assert {a.dest: a.default for a in sub["index"]._actions}["batch_size"] == Runtime().batch_size
    from dermsearch.web.config import WebConfig

    serve, w = {a.dest: a.default for a in sub["serve"]._actions}, WebConfig()
    assert (serve["rate_limit"], serve["concurrency"], serve["queue"], serve["auth"]) == \
        (w.rate_limit, w.concurrency, w.queue, w.auth)
    assert serve["max_upload_mb"] * 2**20 == w.max_upload_bytes
    text = " ".join(sub["search"].format_help().split())
    assert "diagnosis=melanoma,nevus" in text and "age_approx=30:60" in text and "(default 5)" in text


def test_choice_lists_are_the_ones_the_configs_check():
    """train's and evaluate's choice lists are names.py's, which the configs and the models check."""
    import argparse

    import torch

    from dermsearch.evaluate.exclusion import check
    from dermsearch.models.ensemble import tta_views
    from dermsearch.models.segmentation import BLOCKS
    from dermsearch.names import AUGMENTS, BACKBONE_INITS, EXCLUDE_SAME, SEG_ARCHS, TARGETS, TTA_COUNTS
    from dermsearch.train.config import ClassifierTrainConfig

    def subparsers(parser):
        return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices

    def choices(parser):
        return {a.dest: a.choices for a in parser._actions if a.choices is not None}

    sub = subparsers(build_parser())
    train = subparsers(sub["train"])
    seg, clf, ev = choices(train["segmenter"]), choices(train["classifier"]), choices(sub["evaluate"])
    assert tuple(seg["arch"]) == SEG_ARCHS == tuple(BLOCKS)
    assert (tuple(clf["target"]), tuple(clf["augment"]), tuple(clf["weights"]), tuple(clf["tta"])) == \
        (TARGETS, AUGMENTS, BACKBONE_INITS, TTA_COUNTS)
    assert tuple(ev["exclude_same"]) == EXCLUDE_SAME
    for target in TARGETS:
        assert ClassifierTrainConfig(target=target).target == target
    for augment in AUGMENTS:
        assert ClassifierTrainConfig(augment=augment).augment == augment
    for n in TTA_COUNTS:
        assert ClassifierTrainConfig(tta=n).tta == n
        assert len(tta_views(torch.zeros(1, 3, 4, 4), n)) == n
    for bad in ({"target": "nevus"}, {"augment": "x8"}, {"tta": 3}):
        with pytest.raises(ValueError):
            ClassifierTrainConfig(**bad)
    assert [check(e) for e in EXCLUDE_SAME] == list(EXCLUDE_SAME)
    with pytest.raises(ValueError, match="exclude_same"):
        check("family")
