"""The guides work as written. The README's tour runs as a new user runs it after `make demo`:
its bash block through bash, in a scratch "clone" whose `.venv` is the environment running the
tests, with a PATH that does not hold `dermsearch` until the block's `. .venv/bin/activate`; then
its Python block; and all it writes is ignored by git. Then every command and code block of
docs/usage.md, on the index the tour built, except the commands that need a cluster, a server or
HAM10000 (SKIPPED names each with its reason). The install lines agree with the Makefile and with
the missing-extra messages, and usage.md names every command the parser has."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

TORCH_LINE = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
QUERY = "examples/queries/ISIC_0000022.jpg"

# usage.md commands not run here, and why (each pattern must match a command of usage.md)
SKIPPED = {
    r"--dask ": "needs a Dask cluster; test_distributed_examples_run_on_a_local_cluster runs distributed.md's on one",
    r"^dermsearch serve ": "starts a server that runs until stopped; tests/test_web.py drives the app it serves",
    r"^dermsearch train ": "trains networks on HAM10000 (hours); tests/test_classifier.py and test_segmentation.py "
                           "train small ones",
    r"^dermsearch eval-(classifier|segmenter) ": "needs HAM10000's labels, ground-truth masks and split "
                                                "(../shared/data); tests/test_segmentation.py runs eval-segmenter",
    r"--compare other-index": "needs a second index of the same images built with another model; "
                              "tests/test_compare.py runs the comparison",
    r"^dermsearch fit-metadata-head ": "needs a split of the index's rows with melanomas on both sides; "
                                       "tests/test_metadata_head.py fits one on a small index through the CLI",
    r"ic-index": "a second build of the sample with every style layer weighted (minutes here) and a split of its "
                 "rows; tests/test_style.py fits weights on a small index",
}


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def _commands(block: str) -> list[str]:
    lines = [line.split("  #")[0].strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _readme() -> str:
    return (REPO / "README.md").read_text()


def _usage() -> str:
    return (REPO / "docs" / "usage.md").read_text()


# ------------------------------------------------------------------ fast checks (no model runs)
def test_install_lines_agree_with_the_makefile_and_the_messages():
    from dermsearch import __version__
    from dermsearch.errors import install_hint

    readme, usage, makefile = _readme(), _usage(), (REPO / "Makefile").read_text()
    wheel = f"pip install 'dist/dermsearch-{__version__}-py3-none-any.whl["
    assert TORCH_LINE in readme and TORCH_LINE in usage
    assert wheel in readme and wheel in usage and "pip install -e '.[" in readme + usage
    assert "pip install dermsearch" not in readme + usage + (REPO / "docs" / "distributed.md").read_text()
    assert re.search(r"^TORCH\s+:= torch==2\.13\.0$", makefile, flags=re.M)
    assert re.search(r"^TORCH_INDEX \?= https://download\.pytorch\.org/whl/cpu$", makefile, flags=re.M)
    assert "$(BIN)/pip install --quiet $(TORCH) --index-url $(TORCH_INDEX)" in makefile
    assert f'version = "{__version__}"' in (REPO / "pyproject.toml").read_text()
    hint = install_hint("web")
    assert "pip install -e '.[web]'" in hint and wheel + "web]'" in hint
    # the tour starts by activating what make demo made
    tour = next(b for b in _blocks(readme, "bash") if "dermsearch index" in b)
    assert _commands(tour)[0] == ". .venv/bin/activate"


def test_every_install_line_is_one_that_works():
    """No guide, message or script names a package-index entry (dermsearch is not on one): each
    ``pip install`` is the CPU torch line, an editable install from a clone, the built wheel, or
    (in the package) :func:`~dermsearch.errors.install_hint`, which says both."""
    allowed = (re.escape(TORCH_LINE), r"pip install -e '\.\[[a-z,]+\]'", r"pip install -e \.",
               r"pip install 'dist/dermsearch-\d+\.\d+\.\d+-py3-none-any\.whl\[[a-z,]+\]'")
    files = [REPO / "README.md", REPO / "Makefile", *sorted((REPO / "docs").glob("*.md")),
             *sorted((REPO / "benchmarks").glob("*.py")), *sorted((REPO / "examples").rglob("*.py"))]
    bad = []
    for path in files:
        for line in path.read_text().splitlines():
            for hit in re.findall(r"pip install .*", line):
                if "$(" in hit or "--no-index" in hit:          # the Makefile's own lines; offline copies
                    continue
                if not any(re.match(a, hit) for a in allowed):
                    bad.append(f"{path.relative_to(REPO)}: {hit}")
    for path in sorted((REPO / "src" / "dermsearch").rglob("*.py")):
        if path.name != "errors.py" and "pip install" in path.read_text():
            bad.append(f"{path.relative_to(REPO)}: says 'pip install' itself (use errors.install_hint)")
    assert not bad, "\n".join(bad)


def test_missing_extras_say_the_install_line(monkeypatch):
    """A missing optional dependency is one :class:`MissingExtraError` (exit 3) with the install line."""
    from dermsearch.errors import MissingExtraError, install_hint
    from dermsearch.search.fast_rows import _fsspec

    monkeypatch.setitem(sys.modules, "fsspec", None)          # as if not installed: importing it fails
    with pytest.raises(MissingExtraError, match=re.escape(install_hint("tier"))) as caught:
        _fsspec()
    assert caught.value.exit_code == 3

    from dermsearch.extract import Extractor, extractor
    from dermsearch.runtime import Runtime

    from .conftest import TINY

    monkeypatch.setattr(extractor, "onnx_available", lambda: False)
    with pytest.raises(MissingExtraError, match=re.escape(install_hint("onnx"))):
        Extractor(TINY, Runtime(backend="onnx"))


def _command_names(parser: argparse.ArgumentParser, prefix: str = "dermsearch") -> list[str]:
    names = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                inner = _command_names(sub, f"{prefix} {name}")
                names.extend(inner or [f"{prefix} {name}"])
    return names


def test_usage_names_every_command_and_every_skip_is_used():
    from dermsearch.cli.main import build_parser

    commands = [c for b in _blocks(_usage(), "bash") for c in _commands(b) if c.startswith("dermsearch ")]
    names = _command_names(build_parser())
    assert len(names) >= 19
    missing = [n for n in names if not any(c == n or c.startswith(n + " ") for c in commands)]
    assert not missing, f"docs/usage.md does not show {missing}"
    for pattern in SKIPPED:
        assert any(re.search(pattern, c) for c in commands), pattern


# ------------------------------------------------------------------ the tour, run as written
@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A scratch clone after `make demo`: the examples, and `.venv` = the environment running the tests."""
    venv = Path(sys.prefix)
    if sys.prefix == sys.base_prefix or not (venv / "bin" / "activate").is_file() \
            or not (venv / "bin" / "dermsearch").is_file():
        pytest.skip("the tests do not run in a virtual environment with dermsearch installed (make test makes "
                    ".venv): the tour's '. .venv/bin/activate' needs one")
    root = tmp_path_factory.mktemp("clone")
    (root / "examples").symlink_to(REPO / "examples")
    (root / ".venv").symlink_to(venv)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PATH="/usr/local/bin:/usr/bin:/bin", PYTHONPATH=str(REPO / "src"))
    return root, env


@pytest.fixture(scope="module")
def tour(clone):
    root, env = clone
    bare = subprocess.run(["bash", "-c", "command -v dermsearch"], cwd=root, env=env, capture_output=True, text=True)
    assert bare.returncode != 0, f"dermsearch is on PATH before activation: {bare.stdout}"
    block = next(b for b in _blocks(_readme(), "bash") if "dermsearch index" in b)
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=root, env=env, capture_output=True, text=True)
    return root, env, res


@pytest.mark.slow
def test_readme_tour_runs_after_make_demo(tour):
    root, env, res = tour
    assert res.returncode == 0, res.stderr[-3000:]
    assert "my-index: added 48" in res.stdout and "candidates: 48" in res.stdout
    assert '"results"' in res.stdout and "macro" in res.stdout          # the --json search; the evaluation
    assert (root / "my-index" / "dermsearch.json").is_file()

    (code,) = _blocks(_readme(), "python")
    res = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    assert lines and all(" melanoma " in line for line in lines)     # the filter kept melanomas only


@pytest.mark.slow
def test_readme_tour_writes_only_what_git_ignores(tour):
    root, _, res = tour
    assert res.returncode == 0, res.stderr[-3000:]
    written = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir()
                     if p.name not in ("examples", ".venv"))
    assert "my-index/" in written
    check = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=REPO, input="\n".join(written),
                           capture_output=True, text=True)
    assert sorted(check.stdout.split()) == written, f"not ignored by git: {set(written) - set(check.stdout.split())}"


@pytest.mark.slow
def test_usage_commands_and_code_run(tour, monkeypatch, capsys):
    """usage.md in order: its Python example on the index the tour optimized, every command not in
    SKIPPED (in-process, exit 0), then the ONNX block on the export its command wrote."""
    from dermsearch.cli.main import main

    root, env, res = tour
    assert res.returncode == 0, res.stderr[-3000:]
    monkeypatch.chdir(root)
    blocks = _blocks(_usage(), "python")
    example = next(b for b in blocks if "Searcher(" in b)
    out = subprocess.run([sys.executable, "-c", example], cwd=root, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert '"results"' in out.stdout and '"explain"' in out.stdout    # JSON, as search --json prints it

    ran = []
    for block in _blocks(_usage(), "bash"):
        for command in _commands(block):
            if not command.startswith("dermsearch ") or any(re.search(p, command) for p in SKIPPED):
                continue
            capsys.readouterr()
            code = main(shlex.split(command)[1:])
            captured = capsys.readouterr()
            assert code == 0, f"{command}\n{captured.err[-3000:]}"
            ran.append(command)
    assert len(ran) >= 20
    assert (root / "sheet.html").is_file() and (root / "report" / "report.json").is_file()
    assert (root / "onnx" / "preprocess.json").is_file()

    onnx = next(b for b in blocks if "def encode(" in b)
    out = subprocess.run([sys.executable, "-c", onnx], cwd=root, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[0] == "(1024,) (80712,)"
    written = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir()
                     if p.name not in ("examples", ".venv"))
    check = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=REPO, input="\n".join(written),
                           capture_output=True, text=True)
    assert sorted(check.stdout.split()) == written, f"not ignored by git: {set(written) - set(check.stdout.split())}"
    shutil.rmtree(root / "onnx")


@pytest.mark.slow
def test_distributed_examples_run_on_a_local_cluster(tmp_path):
    """docs/distributed.md's indexing command and sharded-search example, run as written with the
    cluster's address, the index path and the image put in: a LocalCluster for the scheduler,
    the bundled sample for the archive. (Its SLURM and Kubernetes blocks need those systems.)"""
    import logging

    distributed = pytest.importorskip("distributed")
    doc = (REPO / "docs" / "distributed.md").read_text()
    bash = _blocks(doc, "bash")
    python = _blocks(doc, "python")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    sample = REPO / "examples" / "isic-sample"
    query = next((REPO / "examples" / "queries").glob("*.jpg"))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0",
                                  silence_logs=logging.ERROR) as cluster:
        def filled(text: str) -> str:
            return (text.replace("tcp://scheduler:8786", cluster.scheduler_address)
                    .replace("/shared/archive/labels.csv", str(sample / "labels.csv"))
                    .replace("/shared/ris", str(tmp_path / "ris")).replace('"lesion.jpg"', repr(str(query))))

        index_cmd = filled(bash[0].strip())
        assert index_cmd.startswith("dermsearch index ") and cluster.scheduler_address in index_cmd
        res = subprocess.run([sys.executable, "-m", "dermsearch.cli.main", *shlex.split(index_cmd)[1:], "-q"],
                             cwd=tmp_path, env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-3000:]
        sharded = next(b for b in python if "Searcher(" in b and "dask=" in b)
        code = filled(sharded) + "\nprint(result.results['style'][0].id, len(result.results['style']))\n"
        res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-3000:]
        top, n = res.stdout.split()
        assert n == "5" and top in {p.stem for p in (sample / "images").iterdir()}
