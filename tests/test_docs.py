"""The README's tour runs as written: its shell commands and its Python block, on the bundled
sample, in a scratch directory (the examples linked in); then docs/usage.md's Python example."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_readme_tour_runs(tmp_path):
    readme = (REPO / "README.md").read_text()
    (tmp_path / "examples").symlink_to(REPO / "examples")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    (shell,) = _blocks(readme, "bash")
    commands = [line.split("  #")[0].strip() for line in shell.splitlines() if line.strip()]
    assert len(commands) >= 5 and all(c.startswith("dermsearch ") for c in commands)
    for command in commands:
        argv = [sys.executable, "-m", "dermsearch.cli.main", *shlex.split(command)[1:]]
        res = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert res.returncode == 0, f"{command}\n{res.stderr[-3000:]}"
    assert (tmp_path / "my-index" / "dermsearch.json").is_file()

    (code,) = _blocks(readme, "python")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    assert lines and all(" melanoma " in line for line in lines)     # the filter kept melanomas only

    # docs/usage.md's Python example, on the index the tour built and optimized
    (code,) = _blocks((REPO / "docs" / "usage.md").read_text(), "python")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "'results'" in res.stdout     # the printed to_json() dict


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
