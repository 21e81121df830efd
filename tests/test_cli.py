"""The CLI end to end on 30 real isic-uda1 images (skipped when ../shared/data is absent),
and on the bundled demo sample (always present)."""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys

import pytest

from dermsearch.cli.main import main
from dermsearch.search import MEASURES

from .conftest import REPO, lesion_image, require_isic


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dermsearch.cli.main", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def real_subset(tmp_path_factory):
    isic = require_isic()
    root = tmp_path_factory.mktemp("isic30")
    with open(isic / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    nev = [r for r in rows if r["diagnosis"] == "nevus"][:20]
    mel = [r for r in rows if r["diagnosis"] == "melanoma"][:10]
    (root / "images").mkdir()
    for r in nev + mel:
        shutil.copy(isic / r["image_path"], root / r["image_path"])
    (root / "images" / "ISIC_broken.jpg").write_bytes((isic / nev[0]["image_path"]).read_bytes()[:1000])
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(nev + mel)
        w.writerow({**nev[0], "image_id": "ISIC_broken", "image_path": "images/ISIC_broken.jpg"})
        w.writerow({**nev[0], "image_id": "ISIC_missing", "image_path": "images/ISIC_missing.jpg"})
        # a name that reads as terminal markup: printed as it is, never parsed (once, it broke the batch)
        w.writerow({**nev[0], "image_id": "ISIC_[/b]odd", "image_path": "images/ISIC_[/b]odd[bold].jpg"})
    index = root / "ix"
    res = run("index", str(root / "labels.csv"), "--index", str(index), "--quiet")
    assert res.returncode == 0, res.stderr
    return root, index, res, nev, mel


@pytest.mark.slow
def test_index_reports_bad_files_and_indexes_the_rest(real_subset):
    root, index, res, *_ = real_subset
    assert "added 30" in res.stdout and "skipped 3" in res.stdout
    assert "ISIC_broken.jpg: corrupt or truncated" in res.stderr
    assert "ISIC_missing.jpg: file not found" in res.stderr
    assert "ISIC_[/b]odd[bold].jpg: file not found" in res.stderr
    check = run("index", "--index", str(index), "--check")
    assert check.returncode == 0 and "30 images" in check.stdout and "OK" in check.stdout


@pytest.mark.slow
def test_search_json_every_measure(real_subset):
    root, index, _, nev, mel = real_subset
    q = mel[0]
    res = run("search", str(index), str(root / q["image_path"]), "-k", "5", "--json",
              "--exclude-id", q["image_id"], "--html", str(root / "sheet.html"))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["k"] == 5 and out["candidates"] == 29
    assert list(out["results"]) == list(MEASURES)
    for hits in out["results"].values():
        assert len(hits) == 5
        assert q["image_id"] not in {h["id"] for h in hits}
        assert all(0.0 <= h["score"] <= 1.0 for h in hits)
        assert all(h["components"]["style"] is not None and h["raw"]["dice"] is not None for h in hits)
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    html = (root / "sheet.html").read_text()
    assert html.count("data:image/jpeg;base64") >= 6 and "i1_sd" in html


@pytest.mark.slow
def test_search_self_and_k0(real_subset):
    root, index, _, nev, _ = real_subset
    q = nev[3]
    res = run("search", str(index), str(root / q["image_path"]), "-k", "0", "--json", "--measure", "euclidean", "style")
    out = json.loads(res.stdout)
    assert set(out["results"]) == {"euclidean", "style"}
    assert len(out["results"]["style"]) == 30
    # the query is indexed: it comes first with distance ~0 (same pixels, same model; float32 GEMMs
    # round differently for a batch of 16 at indexing and a batch of 1 at query time: ~1e-5)
    hits = out["results"]["euclidean"]
    assert hits[0]["id"] == q["image_id"]
    assert hits[0]["raw"]["ed"] < 1e-3 and hits[1]["raw"]["ed"] > 1000 * hits[0]["raw"]["ed"]


@pytest.mark.slow
def test_table_output_and_filters(real_subset):
    root, index, _, nev, _ = real_subset
    res = run("search", str(index), str(root / nev[0]["image_path"]), "-k", "3", "--where", "diagnosis=melanoma")
    assert res.returncode == 0, res.stderr
    assert "candidates: 10" in res.stdout and "i1_ecd" in res.stdout and "nevus" not in res.stdout.split("I1")[-1]


@pytest.mark.slow
def test_remove_and_readd(real_subset, tmp_path):
    root, index, *_ = real_subset
    copy = tmp_path / "ix"
    shutil.copytree(index, copy)
    res = run("index", "--index", str(copy), "--remove", "ISIC_0000000", "nope")
    assert res.returncode == 0 and "removed 1" in res.stdout and "nope" in res.stderr
    res = run("index", str(root / "labels.csv"), "--index", str(copy), "--quiet")
    assert "added 1" in res.stdout and "already indexed 29" in res.stdout


def test_cli_errors_are_clear(tmp_path, capsys):
    lesion_image(0).save(tmp_path / "q.jpg")
    assert main(["search", str(tmp_path), str(tmp_path / "q.jpg")]) == 2
    assert "not a dermsearch index" in capsys.readouterr().err
    assert main(["index", str(tmp_path / "nothing"), "--index", str(tmp_path / "ix")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["index", str(tmp_path), "--index", str(tmp_path / "ix"), "--backbone", "efficientnet-b0",
                 "--weights", "imagenet"]) == 2
    assert "efficientnet-lite0/1/2" in capsys.readouterr().err


@pytest.mark.slow
def test_bundled_demo_sample(tmp_path):
    sample = REPO / "examples" / "isic-sample" / "labels.csv"
    assert (REPO / "examples" / "isic-sample" / "ATTRIBUTION.txt").is_file()
    with open(sample) as f:
        assert len(list(csv.DictReader(f))) <= 60
    res = run("index", str(sample), "--index", str(tmp_path / "ix"), "--quiet")
    assert res.returncode == 0, res.stderr
    assert "added 48" in res.stdout
    res = run("search", str(tmp_path / "ix"), str(REPO / "examples/queries/ISIC_0000022.jpg"), "--json")
    out = json.loads(res.stdout)
    assert out["candidates"] == 48 and all(len(v) == 5 for v in out["results"].values())
    assert {h["diagnosis"] for v in out["results"].values() for h in v} <= {"nevus", "melanoma"}


def test_parser_loads_no_heavy_library_and_flags_have_one_spelling():
    code = ("import sys; from dermsearch.cli.main import build_parser; p = build_parser(); "
            "print(','.join(m for m in ('torch', 'numpy', 'lancedb', 'pyarrow', 'onnxruntime') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "", res.stdout + res.stderr
    from dermsearch.cli.main import build_parser

    flags: set[str] = set()

    def walk(parser):
        for action in parser._actions:
            flags.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    walk(build_parser())
    assert {"--split", "--image-size", "--device", "--json"} <= flags
    assert not flags & {"--split-csv", "--size"}      # the drifted spellings are gone


def test_programming_errors_keep_their_traceback(monkeypatch, capsys):
    from dermsearch.cli import cmd_index
    from dermsearch.errors import ConfigError

    def boom(args):
        raise ValueError("a bug, not a usage error")

    monkeypatch.setattr(cmd_index, "cmd_backbones", boom)
    with pytest.raises(ValueError, match="a bug"):
        main(["backbones"])

    def usage(args):
        raise ConfigError("a setting that cannot work")

    monkeypatch.setattr(cmd_index, "cmd_backbones", usage)
    assert main(["backbones"]) == 2
    assert "backbones: error: a setting that cannot work" in capsys.readouterr().err


def test_terminal_output_prints_data_as_it_is():
    """Ids, diagnoses, query names and messages come from the data: a table shows them literally,
    and bracketed text is neither swallowed nor a markup error."""
    from types import SimpleNamespace

    from rich.console import Console

    from dermsearch.cli.common import err, tagged
    from dermsearch.cli.render import print_tables

    hit = SimpleNamespace(rank=1, id="ISIC_[/b]x", diagnosis="[red]nevus", score=0.5,
                          components={"euclidean": 0.5, "cosine": 0.5, "style": None, "dice": None})
    result = SimpleNamespace(query="q[/i].jpg\\", candidates=1, k=1, messages=["mask [bold]none\\"],
                             results={"cosine": [hit]})
    console = Console(record=True, width=200)
    print_tables(result, console)
    text = console.export_text()
    # a trailing backslash stays single (markup escaping would have doubled it)
    for literal in ("ISIC_[/b]x", "[red]nevus", "q[/i].jpg\\ ", "mask [bold]none\\\n"):
        assert literal in text, literal
    assert "\\\\" not in text
    with err.capture() as cap:
        err.print("pip install 'dermsearch[plots]' for images/[/b].jpg")
        err.print(tagged("skipped", "yellow", "dir\\[x]\\"))
    assert "dermsearch[plots]" in cap.get() and "[/b].jpg" in cap.get()
    assert "skipped dir\\[x]\\\n" in cap.get()

