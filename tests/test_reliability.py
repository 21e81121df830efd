"""Crash safety (SIGKILL and resume), consistent snapshots under concurrent writes, the writer
lock, and no unsafe deserialisation anywhere."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading

import numpy as np
import pytest

from dermsearch.cli.main import main
from dermsearch.index import Index
from dermsearch.index.build import build_index
from dermsearch.runtime import Runtime

from .conftest import REPO, lesion_image


@pytest.mark.slow
def test_sigkill_short_version():
    """Three seeded SIGKILLs of `dermsearch index` on the bundled sample (the full 50-run
    version: benchmarks/crash_index.py, figures in docs/reliability.md)."""
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "crash_index.py"), "--runs", "3", "--seed", "1",
                          "--commit-every", "4"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert out["survived"] == 3 and out["failures"] == [] and out["images"] == 48


@pytest.mark.slow
def test_searches_during_writes_see_consistent_snapshots(tiny_extractor, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(40):
        lesion_image(i, 64).save(folder / f"c{i:02d}.png")
    extractor = tiny_extractor
    build_index(folder, tmp_path / "ix", extractor=extractor, runtime=Runtime(batch_size=4), commit_every=4)
    for i in range(40, 80):
        lesion_image(i, 64).save(folder / f"c{i:02d}.png")

    seen, errors, done = [], [], threading.Event()

    def reader():
        while not done.is_set():
            try:
                snap = Index.open(tmp_path / "ix").snapshot()
                n = len(snap.ids)
                ok = (len(set(snap.ids)) == n and snap.features.shape[0] == n and snap.styles.shape[0] == n
                      and snap.masks.shape[0] == n and n % 4 == 0 and np.isfinite(snap.features).all())
                seen.append(n)
                if not ok:
                    errors.append(f"inconsistent snapshot of {n} rows")
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))

    t = threading.Thread(target=reader)
    t.start()
    try:
        build_index(folder, tmp_path / "ix", extractor=extractor, runtime=Runtime(batch_size=4), commit_every=4)
    finally:
        done.set()
        t.join()
    assert errors == []
    assert len(seen) >= 3 and min(seen) >= 40 and max(seen) <= 80
    assert len(Index.open(tmp_path / "ix")) == 80


def test_second_writer_cli_gets_locked_error(tiny_extractor, tmp_path, image_folder, capsys):
    build_index(image_folder, tmp_path / "ix", extractor=tiny_extractor)
    lesion_image(77).save(image_folder / "extra.png")
    with Index.open(tmp_path / "ix").writing():
        rc = main(["index", str(image_folder), "--index", str(tmp_path / "ix"), "--quiet"])
    assert rc == 2 and "locked by another writer" in capsys.readouterr().err
    assert len(Index.open(tmp_path / "ix")) == 8  # nothing written


def test_no_unsafe_deserialisation_in_the_code():
    """No pickle: checkpoints are safetensors; torch.load only with weights_only=True."""
    offenders = []
    for path in (REPO / "src").rglob("*.py"):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                offenders.append(f"{path}: torch.load without weights_only=True")
        for pattern in (r"\bimport pickle\b", r"pickle\.loads?\(", r"allow_pickle\s*=\s*True", r"\bimport dill\b",
                        r"joblib\.load\(", r"yaml\.load\("):
            if re.search(pattern, text):
                offenders.append(f"{path}: {pattern}")
    assert offenders == []
