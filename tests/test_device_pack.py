"""experiments/device_pack.py: what a GPU run carries, and the ensemble it sends back."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("device_pack", ROOT / "experiments" / "device_pack.py")
device_pack = importlib.util.module_from_spec(spec)
spec.loader.exec_module(device_pack)


def _dataset(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "ham"
    (root / "images").mkdir(parents=True)
    rows, split = [], []
    for i, s in enumerate(["train", "train", "val", "test", "train"]):
        name = f"ISIC_{i:07d}"
        if i != 4:                                  # the last row's image is missing
            (root / "images" / f"{name}.jpg").write_bytes(bytes([i]) * (100 + i))
        rows.append({"image_id": name, "lesion_id": f"L{i}", "diagnosis": "nv", "image_path": f"images/{name}.jpg",
                     "mask_path": f"masks/{name}.png"})
        split.append({"image_id": name, "split": s})
    for path, data in ((root / "labels.csv", rows), (root / "split.csv", split)):
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(data[0]))
            w.writeheader()
            w.writerows(data)
    return root / "labels.csv", root / "split.csv"


def test_pack_copies_only_the_chosen_splits_byte_for_byte(tmp_path, capsys):
    labels, split = _dataset(tmp_path)
    out = tmp_path / "pack"
    (out / "data" / "images").mkdir(parents=True)
    (out / "data" / "images" / "ISIC_9999999.jpg").write_bytes(b"from an earlier pack")
    counts = device_pack.pack_images(labels, split, ("train", "val"), out)
    assert counts == {"train": 2, "val": 1}                          # test left out, missing image named
    assert "ISIC_0000004.jpg: missing" in capsys.readouterr().err
    rows = list(csv.DictReader(open(out / "data" / "labels.csv")))
    assert [r["image_id"] for r in rows] == ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"]
    assert "mask_path" not in rows[0]                                  # masks are not needed to train
    assert rows[2]["diagnosis"] == "nv" and rows[2]["lesion_id"] == "L2"
    for r in rows:
        assert (out / "data" / r["image_path"]).read_bytes() == (labels.parent / r["image_path"]).read_bytes()
    assert {r["image_id"]: r["split"] for r in csv.DictReader(open(out / "data" / "split.csv"))} == {
        "ISIC_0000000": "train", "ISIC_0000001": "train", "ISIC_0000002": "val"}
    assert sorted(p.name for p in (out / "data" / "images").iterdir()) == [
        "ISIC_0000000.jpg", "ISIC_0000001.jpg", "ISIC_0000002.jpg"]


def test_travelling_bytes_counts_tracked_untracked_and_the_pack_but_not_ignored(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "config", "core.excludesFile", "/dev/null"], cwd=repo, check=True)
    (repo / ".gitignore").write_text("/pack/\n/build/\n")
    (repo / "big.bin").write_bytes(b"x" * 5000)
    (repo / "small.txt").write_bytes(b"y" * 10)
    subprocess.run(["git", "add", "."], cwd=repo, check=True)
    (repo / "new.txt").write_bytes(b"z" * 300)                   # untracked, not ignored: travels
    (repo / "build").mkdir()
    (repo / "build" / "out.o").write_bytes(b"o" * 9999)           # ignored: stays
    (repo / "pack").mkdir()
    (repo / "pack" / "w.whl").write_bytes(b"w" * 700)             # carried
    total, tracked = device_pack.travelling_bytes(repo, repo / "pack")
    assert total == 5000 + 10 + len("/pack/\n/build/\n") + 300 + 700
    assert tracked[0] == (5000, "big.bin")
    (repo / "big.bin").unlink()                                      # moved aside for the call
    assert device_pack.travelling_bytes(repo, repo / "pack")[0] == total - 5000


def test_join_reassembles_and_refuses_parts_that_do_not_add_up(tmp_path):
    blob = bytes(range(256)) * 1000
    back = tmp_path / "back"
    back.mkdir()
    for i, start in enumerate(range(0, len(blob), 100_000)):
        (back / f"ensemble.safetensors.part-a{chr(97 + i)}").write_bytes(blob[start:start + 100_000])
    (back / "ensemble.safetensors.sha256").write_text(hashlib.sha256(blob).hexdigest() + "  ensemble.safetensors\n")
    got = device_pack.join_parts(back, tmp_path / "joined" / "e.safetensors")
    assert got.read_bytes() == blob
    (back / "ensemble.safetensors.part-ab").unlink()
    with pytest.raises(SystemExit, match="sha256 differs"):
        device_pack.join_parts(back, tmp_path / "joined" / "f.safetensors")
    assert not (tmp_path / "joined" / "f.safetensors").exists()
    assert not (tmp_path / "joined" / "f.safetensors.tmp").exists()
    with pytest.raises(SystemExit, match="no ensemble.safetensors.part"):
        device_pack.join_parts(tmp_path, tmp_path / "g.safetensors")


def test_main_refuses_a_pack_folder_git_does_not_ignore_or_outside_the_repo(tmp_path, monkeypatch, capsys):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / ".gitignore").write_text("/.device-pack/\n")
    monkeypatch.chdir(repo)
    assert device_pack.main(["check", "--out", "notignored"]) == 2
    assert "not ignored by git" in capsys.readouterr().err
    assert device_pack.main(["check", "--out", str(tmp_path / "elsewhere")]) == 2
    assert "cannot be carried" in capsys.readouterr().err
    assert device_pack.main(["check"]) == 0                          # ignored, even before it exists
    (repo / "weights.bin").write_bytes(b"\0" * (device_pack.LIMIT + 1))
    subprocess.run(["git", "add", "weights.bin"], cwd=repo, check=True)
    assert device_pack.main(["check"]) == 1
    assert "weights.bin" in capsys.readouterr().err                   # named, to be moved aside


STUB = """#!/bin/bash
# python3 for device_train.sh: `-c` prints versions; `-m pip` does nothing; `... train classifier`
# writes what the trainer writes into --out, or sleeps when STUB_SLEEP is set, or fails with STUB_FAIL
case "$1" in -c) echo "python 3.12 torch stub"; exit 0 ;; esac
[ "$2" = pip ] && exit 0
while [ $# -gt 0 ]; do [ "$1" = --out ] && out=$2; shift; done
[ -n "${STUB_FAIL:-}" ] && { echo "stub: failing" >&2; exit 1; }
[ -n "${STUB_SLEEP:-}" ] && { echo '{}' > "$out/config.json"; sleep "$STUB_SLEEP"; }
echo '{"seed": 0}' > "$out/config.json"; echo '{"val": {}}' > "$out/metrics.json"
head -c 49000000 /dev/urandom > "$out/e.tmp" && mv "$out/e.tmp" "$out/ensemble.safetensors"   # 5 members' size
"""


def _device_train(tmp_path: Path, **env: str) -> tuple[int, Path, str]:
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    (bin_ / "python3").write_text(STUB)
    (bin_ / "python3").chmod(0o755)
    (bin_ / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA stub, 1 MiB'\n")
    (bin_ / "nvidia-smi").chmod(0o755)
    pack = tmp_path / "pack"
    (pack / "data").mkdir(parents=True, exist_ok=True)
    (pack / "data" / "labels.csv").write_text("image_id,image_path\n")
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)
    res = subprocess.run(["bash", str(ROOT / "experiments" / "device_train.sh"), "--epochs", "1"], cwd=ROOT,
                         env={**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "PACK": str(pack),
                              "OUT": str(out), "RUN": str(tmp_path / "run"), **env},
                         capture_output=True, text=True, timeout=120)
    return res.returncode, out, (out / "train.log").read_text() if (out / "train.log").exists() else ""


def test_device_train_sends_back_at_most_8_files_that_join_to_the_ensemble(tmp_path):
    rc, out, log = _device_train(tmp_path)
    assert rc == 0, log
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files), files
    assert all((out / f).stat().st_size <= 16 * 2**20 for f in files)
    assert "run-json.tgz" in files and "python 3.12 torch stub" in log and "--epochs 1" in log
    joined = device_pack.join_parts(out, tmp_path / "joined.safetensors")
    assert joined.read_bytes() == (tmp_path / "run" / "ensemble.safetensors").read_bytes()


def test_device_train_stopped_by_budget_or_failing_sends_no_ensemble_not_even_an_earlier_one(tmp_path):
    rc, out, _ = _device_train(tmp_path)                 # an earlier call on the same warm machine
    assert rc == 0 and (tmp_path / "run" / "ensemble.safetensors").exists()
    rc, out, log = _device_train(tmp_path, STUB_SLEEP="30", BUDGET="1")
    assert rc == 75 and "stopped by BUDGET" in log
    assert not list(out.glob("ensemble.safetensors*"))
    rc, out, log = _device_train(tmp_path, STUB_FAIL="1")
    assert rc == 1 and "stub: failing" in log
    assert not list(out.glob("ensemble.safetensors*")) and not (out / "run-json.tgz").exists()
